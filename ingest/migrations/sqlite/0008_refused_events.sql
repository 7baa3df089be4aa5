-- Events the database kept refusing to save (a constraint, a trigger, a
-- value it cannot hold), counted across Meta's retries and set aside after
-- INGEST_SAVE_ATTEMPTS so the rest of their webhook is saved (SQLite).
-- Everything that came from Meta is in `kept` (JSON, as bytes): the event's
-- key is only hashed here, so a value the database refuses in a text column
-- cannot stop its own refusal from being recorded.
CREATE TABLE refused_events (
    message_id       TEXT PRIMARY KEY NOT NULL,
    account_id       TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    event_hash       TEXT NOT NULL,
    kept             BLOB NOT NULL,
    attempts         INTEGER NOT NULL,
    error_code       TEXT NOT NULL,
    first_refused_at TEXT NOT NULL,
    last_refused_at  TEXT NOT NULL,
    set_aside_at     TEXT,
    UNIQUE (account_id, event_hash)
);
