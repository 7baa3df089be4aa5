-- Per-account delivery controls (PostgreSQL): the account's cap on
-- deliveries in flight, and an operator's pause and resume of its deliveries.
ALTER TABLE accounts ADD COLUMN max_in_flight BIGINT;
ALTER TABLE accounts ADD COLUMN deliveries_paused_at TIMESTAMPTZ;
ALTER TABLE accounts ADD COLUMN deliveries_resumed_at TIMESTAMPTZ;
