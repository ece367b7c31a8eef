-- An inbox item was keyed by its delivery id alone. A delivery id derives from the notification id,
-- which a producer may choose, so another tenant's item with the same id was refused as a duplicate
-- and its recipient's feed never showed it.
ALTER TABLE inbox_items DROP CONSTRAINT IF EXISTS inbox_items_pkey;
ALTER TABLE inbox_items ADD PRIMARY KEY (tenant_id, delivery_id);
