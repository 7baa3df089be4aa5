-- The whole schema for PostgreSQL: accounts, messages and events with their
-- delivery state, the transactional outbox, delivery attempts, auto-replies.

CREATE TABLE accounts (
    id                       TEXT PRIMARY KEY,
    name                     TEXT NOT NULL,
    instagram_account_id     TEXT NOT NULL UNIQUE,
    crm_webhook_url          TEXT NOT NULL,
    auto_reply_text          TEXT,
    status                   TEXT NOT NULL,
    instagram_access_token   TEXT,
    webhook_secret           TEXT NOT NULL,
    created_at               TIMESTAMPTZ NOT NULL,
    updated_at               TIMESTAMPTZ NOT NULL,
    -- JSON array of the events the CRM receives; NULL for every one.
    events                   TEXT,
    auto_reply_cooldown_secs BIGINT NOT NULL DEFAULT 86400
);

CREATE TABLE messages (
    id                   TEXT PRIMARY KEY,
    account_id           TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    event                TEXT NOT NULL DEFAULT 'message.received',
    -- Recognises Meta's redelivery of the same event (the mid for messages).
    event_key            TEXT NOT NULL,
    instagram_message_id TEXT NOT NULL,
    direction            TEXT NOT NULL,
    conversation_id      TEXT NOT NULL,
    sender_id            TEXT NOT NULL,
    recipient_id         TEXT NOT NULL,
    message_type         TEXT NOT NULL,
    text                 TEXT,
    attachments          TEXT NOT NULL,
    sent_at              TIMESTAMPTZ NOT NULL,
    created_at           TIMESTAMPTZ NOT NULL,
    delivery_status      TEXT NOT NULL DEFAULT 'pending',
    delivery_attempts    BIGINT NOT NULL DEFAULT 0,
    last_error           TEXT,
    delivered_at         TIMESTAMPTZ,
    subject              TEXT,
    payload              BYTEA,
    last_status_code     BIGINT,
    dead_at              TIMESTAMPTZ,
    replays              BIGINT NOT NULL DEFAULT 0,
    last_inbound_seq     BIGINT NOT NULL DEFAULT 0,
    last_attempt         BIGINT NOT NULL DEFAULT 0,
    deleted_at           TIMESTAMPTZ,
    UNIQUE (account_id, event_key)
);

CREATE INDEX messages_by_conversation ON messages (account_id, conversation_id, id);
CREATE INDEX messages_dead_letters ON messages (delivery_status, dead_at, id);

CREATE TABLE outbox (
    message_id       TEXT PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    subject          TEXT NOT NULL,
    payload          BYTEA NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    publish_attempts BIGINT NOT NULL DEFAULT 0,
    nats_msg_id      TEXT,
    hold_until       TIMESTAMPTZ,
    -- Several ingests share the outbox: a row is leased to one publisher at a time.
    claimed_until    TIMESTAMPTZ
);

CREATE INDEX outbox_by_age ON outbox (created_at, message_id);

CREATE TABLE delivery_attempts (
    message_id  TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    inbound_seq BIGINT NOT NULL,
    attempt     BIGINT NOT NULL,
    outcome     TEXT NOT NULL,
    status_code BIGINT,
    error       TEXT,
    at          TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (message_id, inbound_seq, attempt)
);

CREATE TABLE auto_replies (
    account_id      TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    conversation_id TEXT NOT NULL,
    sent_at         TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (account_id, conversation_id)
);
