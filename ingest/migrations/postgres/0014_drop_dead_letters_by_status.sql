-- no-transaction
-- Replaced by messages_set_aside (0013): see there.
DROP INDEX CONCURRENTLY IF EXISTS messages_dead_letters;
