-- When the customer last wrote in each conversation, for the reply windows
-- the CRM payload carries.
ALTER TABLE conversations ADD COLUMN customer_wrote_at TEXT;
