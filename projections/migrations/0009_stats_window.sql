-- A tenant's notifications by request time, for delivery analytics over a window (GET /v1/stats,
-- `tidings stats`).
CREATE INDEX IF NOT EXISTS notifications_requested ON notifications (tenant_id, requested_at);
