-- Dead letters are found through their dead_at (set when a message is set
-- aside, kept when it is discarded), not their delivery_status: every
-- delivery outcome changes the status, and an indexed column that changes
-- makes PostgreSQL write a new entry for the row in every index of the
-- table (four for messages) instead of updating it in place (a HOT update).
-- A delivered or retried message's dead_at stays NULL, so its outcome adds
-- nothing to any index.
--
-- Built in the migration's transaction, not CONCURRENTLY: ingests starting
-- together wait for each other's migrations (an advisory lock), and a
-- concurrent build waits for every older snapshot, a waiting ingest's
-- included: a deadlock, which leaves an invalid index behind. Writes wait
-- while the build reads the table once.
DROP INDEX messages_dead_letters;
CREATE INDEX messages_set_aside ON messages (id) WHERE dead_at IS NOT NULL;
