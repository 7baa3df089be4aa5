-- Per-account delivery controls (SQLite): the account's cap on deliveries in
-- flight, and an operator's pause and resume of its deliveries.
ALTER TABLE accounts ADD COLUMN max_in_flight INTEGER;
ALTER TABLE accounts ADD COLUMN deliveries_paused_at TEXT;
ALTER TABLE accounts ADD COLUMN deliveries_resumed_at TEXT;
