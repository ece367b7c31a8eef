"""Consumes HTTP requests from the tenants' own services; produces NotificationRequested,
NotificationCancelled and recipient events, and reads the delivery-status and recipients projections.

The server-side API of the edge, mounted when `TIDINGS_EDGE_API_KEYS` is set (`tenant:key,...`).
Every route requires `Authorization: Bearer <key>`; the key decides the tenant, so a service can
neither write nor read another tenant's data (someone else's notification is 404, not 403).

Writes are events, not table rows: a 202 means Kafka acknowledged the event (acks=all, idempotent
producer), and the router, projections and gateways take it from there.
- `POST /v1/notifications`: one request. Idempotent: with an `Idempotency-Key` header (or
  `idempotency_key` in the body) the notification id is derived from the tenant and the key, so a
  retried POST gets the same id and the router drops the duplicate (7 days). Otherwise the id is a
  new UUIDv7. A client never chooses the id: one tenant could otherwise take another's.
- `POST /v1/notifications/batch`: up to 100 at once, all validated before any is produced. With an
  `Idempotency-Key` header, item i without its own key gets an id derived from the tenant, the key
  and i (`tidings.ids.batch_item_id`), so a retried batch produces the same ids.
- `POST /v1/notifications/{id}/cancel`.
- Audiences and broadcasts: `gateways/broadcasts_api.py`; destinations: `gateways/destinations_api.py`;
  analytics: `gateways/stats_api.py`; erasure and export of a recipient: `gateways/privacy_api.py`;
  suppressions: `gateways/suppressions_api.py`.
- `PATCH /v1/recipients/{id}` (contacts, merged), `PATCH /v1/recipients/{id}/preferences`,
  `PUT|DELETE /v1/recipients/{id}/devices/{device_id}`,
  `PUT|DELETE /v1/recipients/{id}/webhooks/{endpoint_id}`.

Reads come from the projections, so they lag the topics by the projections' delay:
- `GET /v1/notifications/{id}`: the notification, its deliveries and the timeline of outcomes.
- `GET /v1/recipients/{id}`: contacts, preferences, devices and suppressions (no tokens or secrets).
- `GET /v1/recipients/{id}/notifications?limit=20&before=<cursor>`: what they were sent, newest first.

Errors are RFC 9457 problem documents (`application/problem+json`): 400 for a body that is not JSON,
422 for fields that do not validate (every wrong field named), 401 without a valid key, 429 with
`Retry-After` over the tenant's rate (`TIDINGS_EDGE_API_RATE`), 503 when Kafka does not acknowledge or
PostgreSQL does not answer.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any
from uuid import UUID

import redis.asyncio as aioredis
from aiohttp import web
from psycopg import errors as pg_errors
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from pydantic import TypeAdapter, ValidationError
from redis.exceptions import RedisError

from gateways import _pg as pg
from gateways import (
    broadcasts_api,
    destinations_api,
    devices_api,
    idempotency,
    privacy_api,
    stats_api,
    suppressions_api,
)
from gateways.api_schema import (
    Accepted,
    Batch,
    Body,
    CancelBody,
    DeviceBody,
    NotificationBody,
    PreferencesBody,
    Problem,
    RecipientBody,
    WebhookBody,
    body,
    jsonable,
    problem,
    recipient_view,
)
from gateways.limits import TokenBucket
from gateways.ops import OPERATIONS, Operation
from processors.recipients import RecipientState
from tidings.client import home_topics, notification_request, recipient_update
from tidings.config import PLACEHOLDER, Settings
from tidings.errors import InvalidEvent, KafkaUnavailable
from tidings.events import (
    DeviceRemoved,
    Event,
    Identifier,
    NotificationCancelled,
    NotificationRequested,
    PreferencesUpdated,
    TenantId,
    WebhookEndpointRemoved,
    WebhookEndpointUpdated,
    validated,
)
from tidings.ids import batch_item_id
from tidings.kafka import Output
from tidings.kafka.aio import AsyncProducer
from tidings.kafka.records import size_checked

log = logging.getLogger(__name__)
IDENTIFIER: TypeAdapter[str] = TypeAdapter(Identifier)
API_POOL: web.AppKey[AsyncConnectionPool] = web.AppKey("api_pool", AsyncConnectionPool)
REPORTS_POOL: web.AppKey[AsyncConnectionPool] = web.AppKey("reports_pool", AsyncConnectionPool)
"""Statistics and exports: statements of up to 30 s each, on connections of their own, so a tenant
asking for a month of statistics four times at once cannot take the connections every status read and
feed page waits for."""
API_REDIS: web.AppKey[aioredis.Redis] = web.AppKey("api_redis", aioredis.Redis)
HISTORY = """
SELECT notification_id, notification_type, priority, status, requested_at, terminal_at FROM notifications
WHERE tenant_id = %s AND recipient_id = %s AND requested_at IS NOT NULL
  AND (%s::timestamptz IS NULL OR (requested_at, notification_id) < (%s, %s::uuid))
ORDER BY requested_at DESC, notification_id DESC LIMIT %s
"""
KNOWN_RECIPIENT = (
    "SELECT recipient_id FROM notifications WHERE notification_id = %s AND tenant_id = %s"
    " AND requested_at IS NOT NULL"
)
"""The recipient the notification was requested for: an outcome read before its request (a cancel
naming another recipient, CANCELLED on that recipient's partition) names the wrong one until then."""
DEVICE = "/v1/recipients/{recipient}/devices/{device}"
WEBHOOK = "/v1/recipients/{recipient}/webhooks/{endpoint}"


def parse_keys(spec: str) -> dict[str, str]:
    """`tenant:key,tenant2:key2` → {key: tenant}; a key shorter than 24 characters is refused."""
    keys: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        tenant, _, key = entry.partition(":")
        if not tenant or len(key) < 24:
            raise ValueError("TIDINGS_EDGE_API_KEYS wants tenant:key pairs, each key at least 24 characters")
        if PLACEHOLDER in key:
            raise ValueError(f"TIDINGS_EDGE_API_KEYS: {tenant}'s key is still the example's placeholder")
        try:
            TypeAdapter(TenantId).validate_python(tenant)
        except ValidationError:
            raise ValueError(f"TIDINGS_EDGE_API_KEYS: {tenant!r} is not a valid tenant id") from None
        if key in keys:
            raise ValueError("TIDINGS_EDGE_API_KEYS gives one key to two tenants (or the same one twice)")
        keys[key] = tenant
    return keys


def tenant_of(header: str, keys: dict[str, str]) -> str | None:
    """The tenant of a bearer key, comparing against every key in constant time."""
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        return None
    found = None
    offered = presented.strip().encode("utf-8", "surrogateescape")
    for key, tenant in keys.items():
        if hmac.compare_digest(key.encode(), offered):
            found = tenant
    return found


def mount(
    application: web.Application,
    settings: Settings,
    keys: dict[str, str],
    producer: web.AppKey[AsyncProducer],
    rate: float | None = None,
) -> None:
    """`rate`: notifications per second each tenant may request (burst: 2 s worth, at least 100)."""
    topics = home_topics(settings)
    buckets: dict[str, TokenBucket] = {}

    async def admit(tenant: str, count: int) -> None:
        """Take `count` from the tenant's cluster-wide bucket, or refuse with 429 and Retry-After. When
        Redis does not answer, requests pass: losing the limit for a while beats refusing all ingest."""
        if rate is None:
            return
        bucket = buckets.get(tenant)
        if bucket is None:
            key = f"{settings.topic_prefix}tidings:rate:api:{tenant}"
            bucket = buckets[tenant] = TokenBucket(application[API_REDIS], key, rate, max(100, int(2 * rate)))
        try:
            wait = await bucket.take(count)
        except (RedisError, OSError) as exc:
            log.warning("rate limit unchecked, Redis did not answer: %s", exc)
            return
        if wait > 0:
            response = problem(429, "Too many notifications", f"{rate:g}/s for this tenant; retry later")
            response.headers["Retry-After"] = str(math.ceil(wait))
            raise Problem(response)

    def route(
        handler: Callable[..., Awaitable[web.StreamResponse]],
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            tenant = tenant_of(request.headers.get("Authorization", ""), keys)
            if tenant is None:
                response = problem(401, "A valid API key is required")
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
            pg.TENANT.set(tenant)
            try:
                return await handler(request, tenant)
            except Problem as exc:
                return exc.response
            except InvalidEvent as exc:
                return problem(422, "Invalid event", str(exc))
            except (pg_errors.OperationalError, PoolTimeout) as exc:
                log.warning("PostgreSQL did not answer %s: %s", request.path, exc)
                return problem(503, "The read store is unavailable", "try again later")
            except KafkaUnavailable as exc:
                log.warning("Kafka did not acknowledge %s: %s", request.path, exc)
                return problem(503, "Not accepted", "Kafka did not acknowledge; retry with the same key")

        return wrapped

    async def produce(request: web.Request, *events: Event) -> None:
        outputs = size_checked(Output.event(topics[type(e).__name__], e) for e in events)
        await request.app[producer].deliver(*outputs)

    def accepted(**fields: Any) -> web.Response:
        return web.json_response(Accepted(**fields).model_dump(mode="json", exclude_none=True), status=202)

    def request_of(
        b: NotificationBody, tenant: str, header_key: str | None, item_id: UUID | None = None
    ) -> NotificationRequested:
        if header_key is not None and b.idempotency_key not in (None, header_key):
            raise Problem(problem(422, "Two different idempotency keys", "header and body disagree"))
        fields = b.model_dump(exclude={"idempotency_key"})
        if item_id is not None and b.idempotency_key is None:
            return notification_request(tenant=tenant, notification_id=item_id, **fields)
        return notification_request(tenant=tenant, idempotency_key=b.idempotency_key or header_key, **fields)

    def header_key(request: web.Request) -> str | None:
        key = request.headers.get("Idempotency-Key")
        if key is not None and not 1 <= len(key.strip()) <= 255:
            raise Problem(problem(422, "Invalid Idempotency-Key", "1..255 characters besides white space"))
        try:
            (key or "").encode()
        except UnicodeEncodeError:
            raise Problem(problem(422, "Invalid Idempotency-Key", "the header is not UTF-8")) from None
        return key

    async def same_request(tenant: str, kind: str, key: str | None, request: Any) -> None:
        await idempotency.same_request(
            application[API_REDIS], settings.topic_prefix, tenant, kind, key, request
        )

    async def notify(request: web.Request, tenant: str) -> web.Response:
        b, key = await body(request, NotificationBody), header_key(request)
        event = request_of(b, tenant, key)
        await same_request(
            tenant, "one", b.idempotency_key or key, b.model_dump(mode="json", exclude={"idempotency_key"})
        )
        await admit(tenant, 1)
        await produce(request, event)
        response = accepted(notification_id=event.notification_id)
        response.headers["Location"] = f"/v1/notifications/{event.notification_id}"
        return response

    async def notify_batch(request: web.Request, tenant: str) -> web.Response:
        batch, key = await body(request, Batch), header_key(request)
        events = [
            request_of(b, tenant, None, batch_item_id(tenant, key, i) if key is not None else None)
            for i, b in enumerate(batch.notifications)
        ]
        await same_request(tenant, "batch", key, batch.model_dump(mode="json"))
        for b in batch.notifications:
            await same_request(
                tenant, "one", b.idempotency_key, b.model_dump(mode="json", exclude={"idempotency_key"})
            )
        await admit(tenant, len(events))
        await produce(request, *events)
        return accepted(notification_ids=[e.notification_id for e in events])

    async def cancel(request: web.Request, tenant: str) -> web.Response:
        """409 when the delivery-status projection knows the notification for another recipient: the
        cancellation goes to the named recipient's partition, where it would be told CANCELLED and
        cancel nothing. One the projection does not know yet is taken (it may not be requested yet)."""
        b = await body(request, CancelBody)
        nid = notification_id(request)
        known = await rows(KNOWN_RECIPIENT, nid, tenant)
        if known and known[0]["recipient_id"] not in (None, b.recipient):
            why = "the notification is for another recipient; name the recipient it was requested for"
            return problem(409, "Wrong recipient", why)
        event = validated(
            NotificationCancelled,
            tenant_id=tenant,
            notification_id=nid,
            recipient_id=b.recipient,
            reason=b.reason,
        )
        await produce(request, event)
        return accepted(event_id=event.event_id)

    async def patch_recipient(request: web.Request, tenant: str) -> web.Response:
        fields = (await body(request, RecipientBody)).model_dump(exclude_unset=True)
        event = recipient_update(tenant=tenant, recipient=request.match_info["recipient"], **fields)
        await produce(request, event)
        return accepted(event_id=event.event_id)

    async def patch_preferences(request: web.Request, tenant: str) -> web.Response:
        fields = (await body(request, PreferencesBody)).model_dump()
        event = validated(
            PreferencesUpdated, tenant_id=tenant, recipient_id=request.match_info["recipient"], **fields
        )
        await produce(request, event)
        return accepted(event_id=event.event_id)

    def resource(
        name: str, model: type[Event], id_field: str, id_param: str, payload: type[Body] | None, **extra: Any
    ) -> Callable[[web.Request, str], Awaitable[web.Response]]:
        """A handler producing `model` for the recipient and resource id in the path (and the body)."""

        async def handle(request: web.Request, tenant: str) -> web.Response:
            fields = (await body(request, payload)).model_dump() if payload is not None else extra
            path = {"recipient_id": request.match_info["recipient"], id_field: request.match_info[id_param]}
            event = validated(model, tenant_id=tenant, **path, **fields)
            await produce(request, event)
            return accepted(event_id=event.event_id)

        handle.__name__ = name
        return handle

    delete_device = resource("delete_device", DeviceRemoved, "device_id", "device", None, reason="api")
    put_webhook = resource("put_webhook", WebhookEndpointUpdated, "endpoint_id", "endpoint", WebhookBody)
    delete_webhook = resource(
        "delete_webhook", WebhookEndpointRemoved, "endpoint_id", "endpoint", None, reason="api"
    )

    async def rows(sql: str, *args: Any) -> list[dict[str, Any]]:
        async with application[API_POOL].connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(sql, args)
            return [jsonable(r) for r in await cur.fetchall()]

    put_device = devices_api.put_device(produce, accepted, rows)

    async def get_notification(request: web.Request, tenant: str) -> web.Response:
        nid = notification_id(request)
        head = await rows(
            "SELECT * FROM notifications WHERE notification_id = %s AND tenant_id = %s", nid, tenant
        )
        if not head:
            return problem(404, "Unknown notification", "not (yet) in the delivery-status projection")
        deliveries = await rows(
            "SELECT * FROM deliveries WHERE notification_id = %s AND tenant_id = %s"
            " ORDER BY channel, delivery_id",
            nid,
            tenant,
        )
        timeline = await rows(
            "SELECT * FROM delivery_events WHERE notification_id = %s AND tenant_id = %s"
            " ORDER BY occurred_at, event_id",
            nid,
            tenant,
        )
        return web.json_response({"notification": head[0], "deliveries": deliveries, "timeline": timeline})

    async def history(request: web.Request, tenant: str) -> web.Response:
        try:
            limit = min(max(int(request.query.get("limit", 20)), 1), 100)
            at, nid = parse_cursor(request.query["before"]) if "before" in request.query else (None, None)
        except ValueError:
            return problem(400, "Bad query", "limit is 1..100; before is a cursor from an earlier page")
        found = await rows(HISTORY, tenant, recipient_id(request), at, at, nid, limit)
        more = len(found) == limit
        after = cursor(found[-1]["requested_at"], found[-1]["notification_id"]) if more else None
        return web.json_response({"items": found, "next": after})

    async def get_recipient(request: web.Request, tenant: str) -> web.Response:
        found = await rows(
            "SELECT state, updated_at FROM recipients WHERE tenant_id = %s AND recipient_id = %s",
            tenant,
            recipient_id(request),
        )
        if not found:
            return problem(404, "Unknown recipient", "not (yet) in the recipients projection")
        state = RecipientState.model_validate(found[0]["state"])
        view = {"recipient_id": request.match_info["recipient"], **recipient_view(state)}
        return web.json_response(view | {"updated_at": found[0]["updated_at"]})

    async def pool(app: web.Application) -> AsyncIterator[None]:
        bounded = pg.bounded(settings.postgres_dsn)
        app[API_POOL] = pg.pool(
            settings.postgres_dsn, min_size=1, max_size=4, timeout=5, checked=True, kwargs=bounded
        )
        app[REPORTS_POOL] = pg.pool(
            settings.postgres_dsn, min_size=0, max_size=2, timeout=5, checked=True, kwargs=bounded
        )
        app[API_REDIS] = aioredis.Redis.from_url(
            settings.redis_url, socket_timeout=2, socket_connect_timeout=2
        )
        await app[API_POOL].open()
        await app[REPORTS_POOL].open()
        yield
        await app[REPORTS_POOL].close()
        await app[API_POOL].close()
        await app[API_REDIS].aclose()

    application.cleanup_ctx.append(pool)
    operations = [
        Operation(
            "POST",
            "/v1/notifications",
            notify,
            "Request a notification",
            NotificationBody,
            202,
            idempotent=True,
            rated=True,
        ),
        Operation(
            "POST",
            "/v1/notifications/batch",
            notify_batch,
            "Request up to 100 notifications",
            Batch,
            202,
            idempotent=True,
            rated=True,
        ),
        Operation("GET", "/v1/notifications/{notification_id}", get_notification, "Status and timeline"),
        Operation("POST", "/v1/notifications/{notification_id}/cancel", cancel, "Cancel", CancelBody, 202),
        Operation(
            "GET", "/v1/recipients/{recipient}", get_recipient, "A recipient's contacts and preferences"
        ),
        Operation("PATCH", "/v1/recipients/{recipient}", patch_recipient, "Set contacts", RecipientBody, 202),
        Operation(
            "GET",
            "/v1/recipients/{recipient}/notifications",
            history,
            "A recipient's notifications",
            query=("limit", "before"),
        ),
        Operation(
            "PATCH",
            "/v1/recipients/{recipient}/preferences",
            patch_preferences,
            "Set preferences",
            PreferencesBody,
            202,
        ),
        Operation("PUT", DEVICE, put_device, "Register a push device", DeviceBody, 202),
        Operation("DELETE", DEVICE, delete_device, "Remove a push device", None, 202),
        Operation("PUT", WEBHOOK, put_webhook, "Create or change a webhook endpoint", WebhookBody, 202),
        Operation("DELETE", WEBHOOK, delete_webhook, "Remove a webhook endpoint", None, 202),
        *broadcasts_api.operations(produce, accepted, header_key, rows, same_request),
        *destinations_api.operations(produce, accepted),
        *privacy_api.operations(
            settings, produce, accepted, rows, recipient_id, lambda r: r.app[REPORTS_POOL].connection()
        ),
        *stats_api.operations(REPORTS_POOL),
        *suppressions_api.operations(produce, accepted, rows, recipient_id),
    ]
    for op in operations:
        application.router.add_route(op.method, op.path, route(op.handler))
    application.setdefault(OPERATIONS, []).extend(operations)


def cursor(requested_at: str, notification_id: str) -> str:
    return base64.urlsafe_b64encode(f"{requested_at}|{notification_id}".encode()).decode()


def parse_cursor(text: str) -> tuple[datetime, UUID]:
    """ValueError unless `text` is a cursor `history` gave out."""
    try:
        at, _, nid = base64.urlsafe_b64decode(text.encode()).decode().partition("|")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError(str(exc)) from None
    return datetime.fromisoformat(at), UUID(nid)


def recipient_id(request: web.Request) -> str:
    """The path's recipient id; 404 for one no event could carry (PostgreSQL would refuse a NUL)."""
    try:
        return IDENTIFIER.validate_python(request.match_info["recipient"])
    except ValidationError:
        raise Problem(problem(404, "Unknown recipient", "not a recipient id")) from None


def notification_id(request: web.Request) -> UUID:
    try:
        return UUID(request.match_info["notification_id"])
    except ValueError:
        raise Problem(problem(404, "Unknown notification", "not a notification id")) from None
