-- The suppression each recipient holds on an address (processors/suppression.py registers, folded per
-- recipient as the router does): the router keeps suppressions per recipient, so an address shared by
-- two recipients is suppressed until both are lifted, and an operator's lift names the one it lifts.
-- recipient_id '' holds feedback that named no recipient and rows kept before this table.
CREATE TABLE IF NOT EXISTS suppression_holders (
    tenant_id    text NOT NULL,
    channel      text NOT NULL,
    address      text NOT NULL,
    recipient_id text NOT NULL,
    registers    jsonb NOT NULL,
    active       boolean NOT NULL,
    reason       text,
    since        timestamptz NOT NULL,
    source       text,
    PRIMARY KEY (tenant_id, channel, address, recipient_id)
);
CREATE INDEX IF NOT EXISTS suppression_holders_active
    ON suppression_holders (tenant_id, channel, address, since) WHERE active;
