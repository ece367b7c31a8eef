-- The in-app inbox. inbox_items is written by the in_app gateway (gateways/inapp/inbox.py) and is the
-- source of truth for what a recipient's feed holds: it is not a projection and no rebuild truncates it.
-- seq is the feed's cursor (WebSocket resume, paging). inbox_states is the `inbox` projection of
-- notifications.engagement (seen, read, archived), rebuilt from that topic like any projection.

CREATE TABLE IF NOT EXISTS inbox_items (
    seq               bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    delivery_id       uuid PRIMARY KEY,
    notification_id   uuid NOT NULL,
    tenant_id         text NOT NULL,
    recipient_id      text NOT NULL,
    notification_type text NOT NULL,
    category          text,
    priority          text NOT NULL,
    title             text,
    body              text,
    data_json         text,
    locale            text,
    requested_at      timestamptz NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz
);
CREATE INDEX IF NOT EXISTS inbox_items_feed ON inbox_items (tenant_id, recipient_id, seq);
CREATE INDEX IF NOT EXISTS inbox_items_notification ON inbox_items (tenant_id, recipient_id, notification_id);

CREATE TABLE IF NOT EXISTS inbox_states (
    notification_id uuid PRIMARY KEY,
    tenant_id       text NOT NULL,
    recipient_id    text NOT NULL,
    seen_at         timestamptz,
    read_at         timestamptz,
    archived_at     timestamptz
);
