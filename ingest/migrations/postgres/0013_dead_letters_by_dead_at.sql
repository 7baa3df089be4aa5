-- no-transaction
-- Dead letters are found through their dead_at (set when a message is set
-- aside, kept when it is discarded), not their delivery_status: every
-- delivery outcome changes the status, and an indexed column that changes
-- makes PostgreSQL write a new entry for the row in every index of the
-- table (four for messages) instead of updating it in place (a HOT update).
-- A delivered or retried message's dead_at stays NULL, so its outcome adds
-- nothing to any index. Built without holding writes (CONCURRENTLY, which
-- runs alone, outside a transaction); the old index goes in the next file.
CREATE INDEX CONCURRENTLY IF NOT EXISTS messages_set_aside ON messages (id)
    WHERE dead_at IS NOT NULL;
