-- Audiences and broadcasts (projections/audiences.py), folded from notifications.broadcasts.
-- audience_members: who is in each audience now; broadcasts: each broadcast, the members it covered
-- (the audience's size at the broadcast's place in the topic) and its cancellation.
CREATE TABLE IF NOT EXISTS audience_members (
    tenant_id    text NOT NULL,
    audience_id  text NOT NULL,
    recipient_id text NOT NULL,
    joined_at    timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, audience_id, recipient_id)
);

CREATE TABLE IF NOT EXISTS broadcasts (
    tenant_id         text NOT NULL,
    broadcast_id      uuid NOT NULL,
    audience_id       text NOT NULL,
    notification_type text,
    priority          text,
    requested_at      timestamptz,
    members           integer,
    cancelled_at      timestamptz,
    cancel_reason     text,
    PRIMARY KEY (tenant_id, broadcast_id)
);
