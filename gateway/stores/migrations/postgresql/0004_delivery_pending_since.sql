-- When a delivery last became pending: its creation, or its replay. The oldest-pending gauge (and the
-- alert on it) measures from here, so replaying an old dead letter does not look like a stuck backlog.
ALTER TABLE deliveries ADD COLUMN pending_since timestamptz;  -- NULL: pending since created_at
