-- Accounts, messages and the transactional outbox (SQLite).

CREATE TABLE accounts (
    id                     TEXT PRIMARY KEY NOT NULL,
    name                   TEXT NOT NULL,
    instagram_account_id   TEXT NOT NULL UNIQUE,
    crm_webhook_url        TEXT NOT NULL,
    auto_reply_text        TEXT,
    status                 TEXT NOT NULL,
    instagram_access_token TEXT,
    webhook_secret         TEXT NOT NULL,
    created_at             TEXT NOT NULL,
    updated_at             TEXT NOT NULL
);

CREATE TABLE messages (
    id                   TEXT PRIMARY KEY NOT NULL,
    account_id           TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
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
    -- Meta redelivers a webhook until it gets a 200: one mid is one message.
    UNIQUE (account_id, instagram_message_id)
);

CREATE INDEX messages_by_conversation ON messages (account_id, conversation_id, id);

-- A row here means "saved but not yet acknowledged by JetStream". It is
-- written in the same transaction as the message and removed after the
-- publish is acknowledged, so a saved message is always published.
CREATE TABLE outbox (
    message_id       TEXT PRIMARY KEY NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    subject          TEXT NOT NULL,
    payload          BLOB NOT NULL,
    created_at       TEXT NOT NULL,
    publish_attempts INTEGER NOT NULL DEFAULT 0
);
