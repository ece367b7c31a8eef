-- inbox_states is keyed by tenant, recipient and notification, as the feed joins it: a cancellation or
-- engagement naming another tenant or recipient then makes a row of its own instead of changing (or
-- claiming) the row of the item's owner, whichever of the two topics a rebuild reads first.
ALTER TABLE inbox_states DROP CONSTRAINT IF EXISTS inbox_states_pkey;
ALTER TABLE inbox_states ADD PRIMARY KEY (tenant_id, recipient_id, notification_id);
