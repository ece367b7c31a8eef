-- Audiences and broadcasts (projections/audiences.py), folded from notifications.broadcasts.
-- audience_members: who is in each audience now (ids in byte order, so pages do not depend on the
-- platform's collation); broadcasts: each broadcast per audience (a broadcast id reused under another
-- audience is another broadcast, as in the audience processor, whose state is per partition), the
-- audience's size at its place in the topic, and its cancellation.
CREATE TABLE IF NOT EXISTS audience_members (
    tenant_id    text NOT NULL,
    audience_id  text NOT NULL,
    recipient_id text COLLATE "C" NOT NULL,
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
    PRIMARY KEY (tenant_id, audience_id, broadcast_id)
);
