-- Secret rotation with overlap: the webhook secret before the last rotation
-- (sealed like the current one) and until when deliveries are still signed
-- with it too.
ALTER TABLE accounts ADD COLUMN previous_webhook_secret TEXT;
ALTER TABLE accounts ADD COLUMN previous_secret_until TEXT;
