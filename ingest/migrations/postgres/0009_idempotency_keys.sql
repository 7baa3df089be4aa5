-- Idempotency-Key of API requests that call Meta (sending a reply), per
-- account, with the answer each got: a repeat within 24 h gets the same
-- answer without a second call to Meta. `status` is NULL while it runs.
CREATE TABLE idempotency_keys (
    account_id      TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    idempotency_key TEXT NOT NULL,
    request_hash    TEXT NOT NULL,
    started_at      TIMESTAMPTZ NOT NULL,
    status          BIGINT,
    response        BYTEA,
    PRIMARY KEY (account_id, idempotency_key)
);

CREATE INDEX idempotency_keys_by_start ON idempotency_keys (started_at);
