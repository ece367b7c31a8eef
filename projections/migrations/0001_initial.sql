-- Projection tables. Every table is rebuilt by replaying topics, so rows hold event times only,
-- never the time they were written (rebuilds must be row-for-row identical).

CREATE TABLE IF NOT EXISTS projection_offsets (
    projection  text    NOT NULL,
    topic       text    NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint  NOT NULL,
    PRIMARY KEY (projection, topic, partition)
);

CREATE TABLE IF NOT EXISTS notifications (
    notification_id   uuid PRIMARY KEY,
    tenant_id         text NOT NULL,
    recipient_id      text,
    notification_type text,
    priority          text,
    requested_at      timestamptz,
    status            text,
    status_rank       smallint NOT NULL DEFAULT 0,
    terminal_at       timestamptz
);
CREATE INDEX IF NOT EXISTS notifications_recipient ON notifications (tenant_id, recipient_id);

CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id         uuid PRIMARY KEY,
    notification_id     uuid NOT NULL,
    tenant_id           text NOT NULL,
    recipient_id        text,
    channel             text,
    provider            text,
    provider_message_id text,
    attempts            integer NOT NULL DEFAULT 0,
    status              text NOT NULL,
    status_rank         smallint NOT NULL,
    reason              text,
    first_at            timestamptz NOT NULL,
    last_at             timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_notification ON deliveries (notification_id);

CREATE TABLE IF NOT EXISTS delivery_events (
    event_id        uuid PRIMARY KEY,
    notification_id uuid NOT NULL,
    delivery_id     uuid,
    tenant_id       text NOT NULL,
    channel         text,
    status          text NOT NULL,
    reason          text,
    provider        text,
    attempt         integer NOT NULL,
    template_version integer,
    detail          text,
    occurred_at     timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS delivery_events_notification ON delivery_events (notification_id, occurred_at);

CREATE TABLE IF NOT EXISTS suppressions (
    tenant_id     text NOT NULL,
    channel       text NOT NULL,
    address       text NOT NULL,
    active        boolean NOT NULL,
    reason        text NOT NULL,
    source        text,
    since         timestamptz NOT NULL,
    last_event_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, channel, address)
);

CREATE TABLE IF NOT EXISTS soft_bounces (
    tenant_id text NOT NULL,
    channel   text NOT NULL,
    address   text NOT NULL,
    event_id  uuid NOT NULL,
    at        timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, channel, address, event_id)
);

CREATE TABLE IF NOT EXISTS devices (
    tenant_id      text NOT NULL,
    recipient_id   text NOT NULL,
    device_id      text NOT NULL,
    platform       text NOT NULL,
    token          text NOT NULL,
    app_id         text,
    active         boolean NOT NULL,
    registered_at  timestamptz NOT NULL,
    invalidated_at timestamptz,
    PRIMARY KEY (tenant_id, recipient_id, device_id)
);
CREATE INDEX IF NOT EXISTS devices_token ON devices (tenant_id, token);

CREATE TABLE IF NOT EXISTS token_invalidations (
    tenant_id text NOT NULL,
    token     text NOT NULL,
    at        timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, token, at)
);

CREATE TABLE IF NOT EXISTS recipients (
    tenant_id    text NOT NULL,
    recipient_id text NOT NULL,
    email        text,
    phone        text,
    locale       text,
    timezone     text,
    name         text,
    state        jsonb NOT NULL,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, recipient_id)
);
