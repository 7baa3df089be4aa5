-- The one private reply Meta allows to each comment, claimed before Meta is
-- called and given back if Meta refuses it.
CREATE TABLE private_replies (
    account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    comment_id TEXT NOT NULL,
    claimed_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (account_id, comment_id)
);
