-- Per-conversation order (SQLite). Every event forwarded to the CRM gets the
-- next `sequence` of its conversation, in the transaction that saves it, and
-- the outbox publishes a conversation's events one after another in that
-- order, so the inbound stream holds each conversation in sequence order.

CREATE TABLE conversations (
    account_id      TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    conversation_id TEXT NOT NULL,
    last_sequence   INTEGER NOT NULL,
    PRIMARY KEY (account_id, conversation_id)
);

ALTER TABLE messages ADD COLUMN sequence INTEGER;

-- Copied from the message so the outbox can find a conversation's earlier
-- events without reading the messages table.
ALTER TABLE outbox ADD COLUMN account_id TEXT;
ALTER TABLE outbox ADD COLUMN conversation_id TEXT;
ALTER TABLE outbox ADD COLUMN sequence INTEGER;
CREATE INDEX outbox_by_conversation ON outbox (account_id, conversation_id, sequence);
