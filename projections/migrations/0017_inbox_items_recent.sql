-- The inbox socket's look back in time (gateways/inapp/_feed.py SINCE, MARK) reads a recipient's items
-- created in the last few seconds: without this index it filtered the recipient's whole history.
CREATE INDEX IF NOT EXISTS inbox_items_recent ON inbox_items (tenant_id, recipient_id, created_at);
