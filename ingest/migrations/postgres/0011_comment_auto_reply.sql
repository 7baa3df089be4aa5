-- The private reply sent to each new comment on the account's media.
ALTER TABLE accounts ADD COLUMN comment_auto_reply_text TEXT;
