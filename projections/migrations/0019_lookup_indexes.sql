-- Lookups whose leading key columns no index covered (review, session 25). Each read every entry of
-- the tenant in the primary key's order instead:
-- an erasure's suppression holders (projections/suppressions.py HELD_BY, by tenant and recipient; run
-- while the erasure holds the inbox table lock, so in-app inserts of every tenant waited for it);
CREATE INDEX IF NOT EXISTS suppression_holders_recipient ON suppression_holders (tenant_id, recipient_id);
-- an address's soft bounces in the window (BOUNCE, WINDOW_FULL: read the address's whole history);
CREATE INDEX IF NOT EXISTS soft_bounces_at ON soft_bounces (tenant_id, channel, address, at);
-- a broadcast by id (GET /v1/broadcasts/{id}, a cancellation's audience check);
CREATE INDEX IF NOT EXISTS broadcasts_id ON broadcasts (tenant_id, broadcast_id);
-- a suppression listed by address without a channel (GET /v1/suppressions?address=).
CREATE INDEX IF NOT EXISTS suppressions_address ON suppressions (tenant_id, address);
