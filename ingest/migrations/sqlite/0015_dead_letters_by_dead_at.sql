-- Dead letters are found through their dead_at (set when a message is set
-- aside, kept when it is discarded), not their delivery_status, as on
-- PostgreSQL (its migration 0013): every delivery outcome changes the
-- status, and an index on it moved the message's entry at each outcome, and
-- held an entry for every message saved. A delivered or retried message's
-- dead_at stays NULL, so neither its save nor its outcomes touch this index:
-- each write turn writes fewer pages to the WAL.
DROP INDEX messages_dead_letters;
CREATE INDEX messages_set_aside ON messages (id) WHERE dead_at IS NOT NULL;
