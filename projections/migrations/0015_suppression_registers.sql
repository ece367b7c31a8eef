-- The two registers of each address (processors/suppression.py): the owner's refusal and the delivery
-- failure, so an operator lifting a failure uncovers the refusal beneath it. NULL on rows written before
-- them; the projection restores those from the row's one reason.
ALTER TABLE suppressions ADD COLUMN IF NOT EXISTS registers jsonb;
