-- When the customer last edited a message (message_edit webhooks).
ALTER TABLE messages ADD COLUMN edited_at TEXT;
