-- API tokens scoped to one account (SQLite). Only a SHA-256 of each token is
-- kept; the token itself is shown once, when it is created.
CREATE TABLE api_tokens (
    id         TEXT PRIMARY KEY NOT NULL,
    account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);

CREATE INDEX api_tokens_by_account ON api_tokens (account_id, id);
