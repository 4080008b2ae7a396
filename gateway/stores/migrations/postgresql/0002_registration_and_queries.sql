-- Registration (POST /api/jobs): who asked for a job and what, attached to the job's row, and the
-- indexes behind the read API's filters, the live streams and the stats. Partial where most rows would
-- hold NULL (jobs created by their webhooks, jobs still running): a webhook pays for no index it does not use. Same columns as SQLite's 0002.
ALTER TABLE jobs ADD COLUMN user_id text;
ALTER TABLE jobs ADD COLUMN organization_id text;
ALTER TABLE jobs ADD COLUMN registered_at timestamptz;  -- NULL: never registered (its webhooks created it)
ALTER TABLE jobs ADD COLUMN context text;               -- JSON: prompt, num_images, size, format, style, quality, metadata

CREATE INDEX jobs_by_user ON jobs (user_id, seq) WHERE user_id IS NOT NULL;
CREATE INDEX jobs_by_organization ON jobs (organization_id, seq) WHERE organization_id IS NOT NULL;
CREATE INDEX jobs_by_kind ON jobs (kind, seq);
CREATE INDEX jobs_by_created_at ON jobs (created_at);
CREATE INDEX jobs_by_completed_at ON jobs (completed_at) WHERE completed_at IS NOT NULL;
