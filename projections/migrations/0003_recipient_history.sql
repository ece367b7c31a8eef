-- A recipient's notifications newest first (GET /v1/recipients/{id}/notifications pages by
-- (requested_at, notification_id)).
CREATE INDEX IF NOT EXISTS notifications_recipient_history
    ON notifications (tenant_id, recipient_id, requested_at DESC, notification_id DESC);
