-- Each notification's broadcast (NotificationRequested.broadcast_id), so a broadcast's delivery can be
-- summarised by status and channel (GET /v1/broadcasts/{id}, `tidings audience report`). Rows written
-- before this migration have none until `tidings projections rebuild delivery_status`.
ALTER TABLE notifications ADD COLUMN IF NOT EXISTS broadcast_id uuid;
CREATE INDEX IF NOT EXISTS notifications_broadcast ON notifications (tenant_id, broadcast_id, status)
    WHERE broadcast_id IS NOT NULL;
