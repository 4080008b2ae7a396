-- The sender a job belongs to (GATEWAY_SENDERS_FILE): the first sender that posted for it. NULL: nobody
-- has claimed it yet (a job registered by the app, or any job of a deployment without a senders file).
ALTER TABLE jobs ADD COLUMN sender TEXT;
