-- Recipients whose personal data was erased (RecipientErased), and when. A ledger, not a projection's
-- table: no rebuild truncates it, so the in-app gateway keeps refusing items requested before an
-- erasure even while the recipients projection is being rebuilt.
CREATE TABLE IF NOT EXISTS erasures (
    tenant_id    text NOT NULL,
    recipient_id text NOT NULL,
    erased_at    timestamptz NOT NULL,
    reason       text,
    PRIMARY KEY (tenant_id, recipient_id)
);

-- The audiences a recipient is in, for the erasure API (it removes the recipient from each).
CREATE INDEX IF NOT EXISTS audience_members_recipient ON audience_members (tenant_id, recipient_id);
