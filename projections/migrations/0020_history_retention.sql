-- `tidings db prune` (projections/retention.py) deletes in-app items and soft bounces older than a
-- cutoff, oldest first, a batch at a time: without these indexes every batch read the whole table.
-- Notifications are found per tenant through notifications_requested. Building an index blocks writes
-- to its table meanwhile (measured: 0.5 s for a million inbox items on the 2-core development box).
CREATE INDEX IF NOT EXISTS inbox_items_created ON inbox_items (created_at);
CREATE INDEX IF NOT EXISTS inbox_items_expires ON inbox_items (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS soft_bounces_time ON soft_bounces (at);
