-- Every Instagram event kind, outbound messages, account event settings and
-- auto-replies (SQLite). `messages` is rebuilt: its uniqueness moves from the
-- Instagram mid to an event key, since a reaction or a read receipt refers
-- to a mid that is already stored as the message itself.

CREATE TABLE messages_new (
    id                   TEXT PRIMARY KEY NOT NULL,
    account_id           TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    -- message.received, message.echo, message.sent, message.reaction, ...
    event                TEXT NOT NULL DEFAULT 'message.received',
    -- What makes Meta's redelivery of this event recognisable: the mid for a
    -- message, the kind, mid, sender and time for the other events.
    event_key            TEXT NOT NULL,
    instagram_message_id TEXT NOT NULL,
    direction            TEXT NOT NULL,
    conversation_id      TEXT NOT NULL,
    sender_id            TEXT NOT NULL,
    recipient_id         TEXT NOT NULL,
    message_type         TEXT NOT NULL,
    text                 TEXT,
    attachments          TEXT NOT NULL,
    sent_at              TEXT NOT NULL,
    created_at           TEXT NOT NULL,
    delivery_status      TEXT NOT NULL DEFAULT 'pending',
    delivery_attempts    INTEGER NOT NULL DEFAULT 0,
    last_error           TEXT,
    delivered_at         TEXT,
    subject              TEXT,
    payload              BLOB,
    last_status_code     INTEGER,
    dead_at              TEXT,
    replays              INTEGER NOT NULL DEFAULT 0,
    last_inbound_seq     INTEGER NOT NULL DEFAULT 0,
    last_attempt         INTEGER NOT NULL DEFAULT 0,
    deleted_at           TEXT,
    UNIQUE (account_id, event_key)
);

INSERT INTO messages_new (id, account_id, event, event_key, instagram_message_id, direction,
    conversation_id, sender_id, recipient_id, message_type, text, attachments, sent_at, created_at,
    delivery_status, delivery_attempts, last_error, delivered_at, subject, payload,
    last_status_code, dead_at, replays, last_inbound_seq, last_attempt)
SELECT id, account_id, 'message.received', instagram_message_id, instagram_message_id, direction,
    conversation_id, sender_id, recipient_id, message_type, text, attachments, sent_at, created_at,
    delivery_status, delivery_attempts, last_error, delivered_at, subject, payload,
    last_status_code, dead_at, replays, last_inbound_seq, last_attempt
FROM messages;

-- Keep the dependants' rows while the table is swapped.
CREATE TABLE outbox_keep AS SELECT * FROM outbox;
CREATE TABLE attempts_keep AS SELECT * FROM delivery_attempts;
DROP TABLE outbox;
DROP TABLE delivery_attempts;
DROP TABLE messages;
ALTER TABLE messages_new RENAME TO messages;

CREATE INDEX messages_by_conversation ON messages (account_id, conversation_id, id);
CREATE INDEX messages_dead_letters ON messages (delivery_status, dead_at, id);
CREATE INDEX messages_by_mid ON messages (account_id, instagram_message_id);

CREATE TABLE outbox (
    message_id       TEXT PRIMARY KEY NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    subject          TEXT NOT NULL,
    payload          BLOB NOT NULL,
    created_at       TEXT NOT NULL,
    publish_attempts INTEGER NOT NULL DEFAULT 0,
    nats_msg_id      TEXT,
    -- Not published before this time: a short wait for the sender's username.
    hold_until       TEXT
);
INSERT INTO outbox (message_id, subject, payload, created_at, publish_attempts, nats_msg_id)
SELECT message_id, subject, payload, created_at, publish_attempts, nats_msg_id FROM outbox_keep;
DROP TABLE outbox_keep;

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
INSERT INTO delivery_attempts SELECT * FROM attempts_keep;
DROP TABLE attempts_keep;

-- Which events the account's CRM receives: a JSON array, NULL for every one.
ALTER TABLE accounts ADD COLUMN events TEXT;
ALTER TABLE accounts ADD COLUMN auto_reply_cooldown_secs INTEGER NOT NULL DEFAULT 86400;

-- The last auto-reply per conversation; claimed atomically so that several
-- ingests never send two.
CREATE TABLE auto_replies (
    account_id      TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    conversation_id TEXT NOT NULL,
    sent_at         TEXT NOT NULL,
    PRIMARY KEY (account_id, conversation_id)
);
