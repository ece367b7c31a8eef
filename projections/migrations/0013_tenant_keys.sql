-- Notification, delivery and event ids are unique within a tenant, not across tenants: an API caller
-- names ids (a cancellation, a provider's report), and a row keyed by the id alone let one tenant's
-- event write to, or take, another tenant's row. Every reader already filters by tenant; the operator
-- CLI looks notifications up by id alone (notifications_id).
ALTER TABLE notifications DROP CONSTRAINT IF EXISTS notifications_pkey;
ALTER TABLE notifications ADD PRIMARY KEY (tenant_id, notification_id);
CREATE INDEX IF NOT EXISTS notifications_id ON notifications (notification_id);
ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS deliveries_pkey;
ALTER TABLE deliveries ADD PRIMARY KEY (tenant_id, delivery_id);
ALTER TABLE delivery_events DROP CONSTRAINT IF EXISTS delivery_events_pkey;
ALTER TABLE delivery_events ADD PRIMARY KEY (tenant_id, event_id);
