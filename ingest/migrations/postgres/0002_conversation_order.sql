-- Per-conversation order (PostgreSQL). Every event forwarded to the CRM gets
-- the next `sequence` of its conversation, in the transaction that saves it
-- (the counter row is locked until commit, so two ingests saving one
-- conversation at once take turns), and the outbox publishes a conversation's
-- events one after another in that order.

CREATE TABLE conversations (
    account_id      TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    conversation_id TEXT NOT NULL,
    last_sequence   BIGINT NOT NULL,
    PRIMARY KEY (account_id, conversation_id)
);

ALTER TABLE messages ADD COLUMN sequence BIGINT;

-- Copied from the message so the outbox can find a conversation's earlier
-- events without reading the messages table.
ALTER TABLE outbox ADD COLUMN account_id TEXT;
ALTER TABLE outbox ADD COLUMN conversation_id TEXT;
ALTER TABLE outbox ADD COLUMN sequence BIGINT;
CREATE INDEX outbox_by_conversation ON outbox (account_id, conversation_id, sequence);
