-- Delivery attempts become a table without rowid, stored in the order of
-- its primary key: one b-tree instead of two (the rows, and an index for
-- the key), so recording an outcome writes one page fewer to the WAL. Its
-- rows are small (ids, a status, a short error) and always found by
-- message, as that key is.
CREATE TABLE delivery_attempts_by_message (
    message_id   TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    inbound_seq  INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    outcome      TEXT NOT NULL,
    status_code  INTEGER,
    error        TEXT,
    at           TEXT NOT NULL,
    PRIMARY KEY (message_id, inbound_seq, attempt)
) WITHOUT ROWID;
INSERT INTO delivery_attempts_by_message
SELECT message_id, inbound_seq, attempt, outcome, status_code, error, at FROM delivery_attempts;
DROP TABLE delivery_attempts;
ALTER TABLE delivery_attempts_by_message RENAME TO delivery_attempts;
