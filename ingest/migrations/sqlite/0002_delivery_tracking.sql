-- Delivery outcomes, dead letters and replays (SQLite).

-- The body and subject as first published, so a dead letter can be replayed
-- with the same message_id (and so the same webhook-id).
ALTER TABLE messages ADD COLUMN subject TEXT;
ALTER TABLE messages ADD COLUMN payload BLOB;
ALTER TABLE messages ADD COLUMN last_status_code INTEGER;
ALTER TABLE messages ADD COLUMN dead_at TEXT;
ALTER TABLE messages ADD COLUMN replays INTEGER NOT NULL DEFAULT 0;
-- The newest outcome applied, as (inbound stream sequence, attempt), so an
-- outcome that arrives late never overwrites a newer one.
ALTER TABLE messages ADD COLUMN last_inbound_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN last_attempt INTEGER NOT NULL DEFAULT 0;

CREATE INDEX messages_dead_letters ON messages (delivery_status, dead_at, id);

-- One row per delivery attempt; the key makes recording an outcome twice harmless.
CREATE TABLE delivery_attempts (
    message_id   TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    inbound_seq  INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    outcome      TEXT NOT NULL,
    status_code  INTEGER,
    error        TEXT,
    at           TEXT NOT NULL,
    PRIMARY KEY (message_id, inbound_seq, attempt)
);

-- A replay is published under a new Nats-Msg-Id (JetStream would drop a
-- repeat of the original within its duplicate window); NULL means message_id.
ALTER TABLE outbox ADD COLUMN nats_msg_id TEXT;
