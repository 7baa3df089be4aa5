-- The access token's lifecycle: when the current token was set or last
-- refreshed, when it expires (NULL: not known yet; learnt from Meta's
-- answer to the first refresh), when a refresh was last tried (at most once
-- a day, across every ingest), and where the credentials stand.
ALTER TABLE accounts ADD COLUMN token_set_at TEXT;
ALTER TABLE accounts ADD COLUMN token_expires_at TEXT;
ALTER TABLE accounts ADD COLUMN token_refresh_attempted_at TEXT;
ALTER TABLE accounts ADD COLUMN credentials_state TEXT NOT NULL DEFAULT 'valid';
ALTER TABLE accounts ADD COLUMN credentials_error TEXT;
UPDATE accounts SET credentials_state = 'invalid', credentials_error = 'meta_190'
    WHERE status = 'credentials_invalid';
