"""The server-side HTTP API on the real stack: requests and recipient writes become events on the real
topics (routed by the real router), reads come from the real projections, per tenant; the operational
endpoints report the real dependencies."""

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import psycopg
from openapi_spec_validator import validate
from pydantic import SecretStr

from gateways.edge import EdgeSettings
from tests.integration.test_edge import serving as edge_serving
from tests.integration.test_projections import project
from tests.integration.test_router import commands, decoded, publish_catalog, run_router
from tidings.config import Settings
from tidings.events import (
    DeviceRegistered,
    DeviceRemoved,
    NotificationCancelled,
    NotificationRequested,
    PreferencesUpdated,
    RecipientUpdated,
    WebhookEndpointUpdated,
)
from tidings.ids import batch_item_id, notification_id_for
from tidings.topics import names

ACME, GLOBEX = "acme-key-0123456789abcdefghij", "globex-key-0123456789abcdefghij"
KEYS = f"acme:{ACME},globex:{GLOBEX}"
SHIPPED = {"recipient": "ada", "type": "order.shipped", "data": {"order": "A-1", "carrier": "DHL"}}


async def serving(s: Settings, scenario: Callable[[str], Awaitable[Any]]) -> Any:
    return await edge_serving(s, scenario, EdgeSettings(api_keys=SecretStr(KEYS)))


async def call(
    http: aiohttp.ClientSession, method: str, url: str, key: str | None = ACME, **kwargs: Any
) -> tuple[int, Any, dict[str, str]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    headers |= kwargs.pop("headers", {})
    async with http.request(method, url, headers=headers, **kwargs) as r:
        body = await r.json(content_type=None) if r.content_type.endswith("json") else await r.text()
        return r.status, body, dict(r.headers)


def test_a_posted_request_is_acknowledged_routed_and_idempotent(topology: Settings) -> None:
    s = topology
    publish_catalog(s)

    async def scenario(base: str) -> list[tuple[int, Any, dict[str, str]]]:
        async with aiohttp.ClientSession() as http:
            contact = {"email": "ada@example.com", "locale": "de-AT"}
            await call(http, "PATCH", f"{base}/v1/recipients/ada", json=contact)
            retried = [
                await call(
                    http, "POST", f"{base}/v1/notifications", json=SHIPPED, headers={"Idempotency-Key": "o-1"}
                )
                for _ in range(2)
            ]
            other = await call(http, "POST", f"{base}/v1/notifications", json=SHIPPED)
            return [*retried, other]

    (s1, b1, h1), (s2, b2, _), (s3, b3, _) = asyncio.run(serving(s, scenario))
    assert (s1, s2, s3) == (202, 202, 202)
    assert b1 == b2 != b3
    assert h1["Location"] == f"/v1/notifications/{b1['notification_id']}"
    requested = [e for e in decoded(s, names(s).requested) if isinstance(e, NotificationRequested)]
    assert [str(e.notification_id) for e in requested] == [b1["notification_id"]] * 2 + [
        b3["notification_id"]
    ]
    assert {e.tenant_id for e in requested} == {"acme"}
    run_router(s)
    emails = [c for c in commands(s) if c.channel == "email"]
    assert sorted(str(c.notification_id) for c in emails) == sorted(
        [b1["notification_id"], b3["notification_id"]]
    )
    assert {c.content.subject for c in emails} == {"Ihre Bestellung A-1 ist unterwegs"}


def test_a_retried_batch_with_an_idempotency_key_gets_the_same_ids(topology: Settings) -> None:
    s = topology
    items = [SHIPPED, SHIPPED | {"recipient": "bob"}, SHIPPED | {"idempotency_key": "own"}]

    async def scenario(base: str) -> list[tuple[int, Any, dict[str, str]]]:
        url = f"{base}/v1/notifications/batch"
        async with aiohttp.ClientSession() as http:
            return [
                await call(http, "POST", url, json={"notifications": items}, headers={"Idempotency-Key": "b"})
                for _ in range(2)
            ] + [await call(http, "POST", url, json={"notifications": items[:2]})]

    (s1, first, _), (s2, retried, _), (s3, unkeyed, _) = asyncio.run(serving(s, scenario))
    assert (s1, s2, s3) == (202, 202, 202)
    assert first == retried
    assert len(set(first["notification_ids"])) == 3
    assert first["notification_ids"][2] == str(notification_id_for("acme", "own"))
    assert not set(unkeyed["notification_ids"]) & set(first["notification_ids"])
    assert first["notification_ids"][0] == str(batch_item_id("acme", "b", 0))


def test_an_idempotency_key_reused_for_a_different_request_is_refused(topology: Settings) -> None:
    """The key derives the id and the router drops an id it has seen: another recipient's request under
    a used key was answered 202 and then dropped as a duplicate, or sent under the first one's id."""
    s = topology
    reordered = SHIPPED | {"data": {"carrier": "DHL", "order": "A-1"}}

    async def scenario(base: str) -> list[tuple[int, Any, dict[str, str]]]:
        url = f"{base}/v1/notifications"
        one = {"Idempotency-Key": "order-123"}
        async with aiohttp.ClientSession() as http:
            return [
                await call(http, "POST", url, json=SHIPPED, headers=one),
                await call(http, "POST", url, json=reordered, headers=one),
                await call(http, "POST", url, json=SHIPPED | {"recipient": "bob"}, headers=one),
                await call(http, "POST", url, json=SHIPPED | {"recipient": "bob"}, headers=one, key=GLOBEX),
                await call(http, "POST", f"{url}/batch", json={"notifications": [SHIPPED]}, headers=one),
                await call(
                    http, "POST", f"{url}/batch", json={"notifications": [SHIPPED, SHIPPED]}, headers=one
                ),
                await call(
                    http,
                    "POST",
                    f"{url}/batch",
                    json={"notifications": [SHIPPED | {"recipient": "eve", "idempotency_key": "order-123"}]},
                ),
            ]

    answers = asyncio.run(serving(s, scenario))
    assert [status for status, _, _ in answers] == [202, 202, 422, 202, 202, 422, 422]
    assert answers[2][1]["title"] == "Idempotency-Key reused"
    assert answers[0][1] == answers[1][1]
    requested = [e for e in decoded(s, names(s).requested) if isinstance(e, NotificationRequested)]
    assert sorted((e.tenant_id, e.recipient_id) for e in requested) == [
        ("acme", "ada"),
        ("acme", "ada"),
        ("acme", "ada"),
        ("globex", "bob"),
    ]


def test_bad_keys_and_bad_bodies_get_problems_and_produce_nothing(topology: Settings) -> None:
    s = topology

    async def scenario(base: str) -> list[tuple[int, Any, dict[str, str]]]:
        url = f"{base}/v1/notifications"
        async with aiohttp.ClientSession() as http:
            return [
                await call(http, "POST", url, key=None, json=SHIPPED),
                await call(http, "POST", url, key="acme-key-0123456789abcdefghiX", json=SHIPPED),
                await call(http, "POST", url, data=b"{not json"),
                await call(http, "POST", url, json={"type": "order.shipped", "priority": "loud"}),
                await call(
                    http,
                    "POST",
                    url,
                    json=SHIPPED | {"notification_id": str(uuid.uuid4())},
                    headers={"Idempotency-Key": "k"},
                ),
                await call(http, "POST", url, json=SHIPPED | {"recipient": "bell\u0007"}),
                await call(http, "POST", url, json=SHIPPED | {"data": {"blob": "x" * 300_000}}),
                await call(http, "POST", f"{url}/batch", json={"notifications": [SHIPPED] * 101}),
                await call(http, "POST", f"{url}/batch", json={"notifications": [SHIPPED, {"type": "x"}]}),
                await call(http, "POST", url, data=b'{"recipient": "ada", "type": "t", "data": {"x": NaN}}'),
                await call(http, "POST", url, data=b"[" * 100_000),
                await call(http, "POST", url, json=SHIPPED, headers={"Idempotency-Key": "  "}),
                await call(
                    http,
                    "POST",
                    f"{url}/batch",
                    json={"notifications": [SHIPPED]},
                    headers={"Idempotency-Key": ""},
                ),
                await call(http, "GET", f"{base}/v1/recipients/a%00b"),
                await call(http, "GET", f"{base}/v1/recipients/a%00b/notifications"),
                await call(http, "POST", url, json=SHIPPED | {"to": {"email": "ada@example.com "}}),
                await call(http, "POST", url, json=SHIPPED | {"to": {"webhook": "https://h.example/in"}}),
                await call(http, "POST", url, data=b'{"recipient": "\\ud800", "type": "order.shipped"}'),
                await call(http, "POST", url, json=SHIPPED | {"expires_at": "9999-12-31T23:00:00-05:00"}),
            ]

    answers = asyncio.run(serving(s, scenario))
    assert [a[0] for a in answers] == [
        401,
        401,
        400,
        422,
        422,
        422,
        422,
        422,
        422,
        400,
        400,
        422,
        422,
        404,
        404,
        422,
        422,
        422,
        422,
    ]
    assert "recipient_overrides" in answers[-3][1]["detail"]
    assert answers[0][2]["WWW-Authenticate"] == "Bearer"
    assert all(a[2]["Content-Type"].startswith("application/problem+json") for a in answers)
    fields = {e["field"] for e in answers[3][1]["errors"]}
    assert fields == {"recipient", "priority"}
    assert [e["field"] for e in answers[4][1]["errors"]] == ["notification_id"]
    assert "NaN is not JSON" in answers[9][1]["detail"]
    assert "recipient_id" in answers[5][1]["detail"]
    assert "larger than" in answers[6][1]["detail"]
    assert decoded(s, names(s).requested) == []


def test_an_idempotency_key_header_that_is_not_utf8_is_a_problem(topology: Settings) -> None:
    """aiohttp hands such a header on with surrogates, which no key derivation can encode: a 500."""
    s = topology
    body = json.dumps(SHIPPED).encode()

    async def scenario(base: str) -> bytes:
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        head = (
            f"POST /v1/notifications HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {ACME}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
        )
        writer.write(head.encode() + b"Idempotency-Key: f\xfcr\r\n\r\n" + body)
        answer = await reader.read()
        writer.close()
        return answer

    answer = asyncio.run(serving(s, scenario))
    assert answer.startswith(b"HTTP/1.1 422 ") and b"not UTF-8" in answer
    assert decoded(s, names(s).requested) == []


def test_status_and_recipient_reads_come_from_the_projections_per_tenant(database: Settings) -> None:
    s = database
    publish_catalog(s)

    async def writes(base: str) -> str:
        async with aiohttp.ClientSession() as http:
            r = f"{base}/v1/recipients/ada"
            await call(http, "PATCH", r, json={"email": "ada@example.com", "timezone": "Europe/Vienna"})
            await call(
                http,
                "PATCH",
                f"{r}/preferences",
                json={"rules": [{"scope": "category", "key": "marketing", "enabled": False}]},
            )
            await call(http, "PUT", f"{r}/devices/phone", json={"platform": "fcm", "token": "secret-token"})
            await call(http, "PUT", f"{r}/devices/old", json={"platform": "apns", "token": "t2"})
            await call(http, "DELETE", f"{r}/devices/old")
            hook = {"url": "https://example.com/hook", "secret": "whsec_" + "A" * 32}
            await call(http, "PUT", f"{r}/webhooks/main", json=hook)
            _, body, _ = await call(http, "POST", f"{base}/v1/notifications", json=SHIPPED)
            return str(body["notification_id"])

    nid = asyncio.run(serving(s, writes))
    kinds = [type(e) for e in decoded(s, names(s).recipients)]
    assert kinds == [
        RecipientUpdated,
        PreferencesUpdated,
        DeviceRegistered,
        DeviceRegistered,
        DeviceRemoved,
        WebhookEndpointUpdated,
    ]
    run_router(s)
    project(s, "delivery_status")
    project(s, "recipients")
    with psycopg.connect(s.postgres_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO deliveries (delivery_id, notification_id, tenant_id, channel, status, status_rank,"
            " first_at, last_at) VALUES (%s, %s, 'globex', 'sms', 'SENT', 2, now(), now())",
            (uuid.uuid4(), nid),
        )
        conn.execute(
            "INSERT INTO delivery_events (event_id, notification_id, tenant_id, channel, status, attempt,"
            " occurred_at) VALUES (%s, %s, 'globex', 'sms', 'SENT', 1, now())",
            (uuid.uuid4(), nid),
        )

    async def reads(base: str) -> list[tuple[int, Any, dict[str, str]]]:
        async with aiohttp.ClientSession() as http:
            return [
                await call(http, "GET", f"{base}/v1/notifications/{nid}"),
                await call(http, "GET", f"{base}/v1/notifications/{nid}", key=GLOBEX),
                await call(http, "GET", f"{base}/v1/notifications/{uuid.uuid4()}"),
                await call(http, "GET", f"{base}/v1/notifications/not-a-uuid"),
                await call(http, "GET", f"{base}/v1/recipients/ada"),
                await call(http, "GET", f"{base}/v1/recipients/ada", key=GLOBEX),
            ]

    status, other, unknown, garbled, recipient, foreign = asyncio.run(serving(s, reads))
    assert [a[0] for a in (status, other, unknown, garbled, recipient, foreign)] == [
        200,
        404,
        404,
        404,
        200,
        404,
    ]
    view = status[1]
    assert view["notification"]["notification_id"] == nid
    assert [d["channel"] for d in view["deliveries"]] == ["email", "in_app", "push"]
    assert {e["status"] for e in view["timeline"]} == {"QUEUED"}
    assert {r["tenant_id"] for r in view["deliveries"] + view["timeline"]} == {"acme"}
    ada = recipient[1]
    assert ada["contacts"]["email"] == "ada@example.com"
    assert ada["preferences"]["rules"] == {"category:marketing:*": False}
    assert set(ada["devices"]) == {"phone"}
    assert ada["webhooks"]["main"]["url"] == "https://example.com/hook"
    assert "secret-token" not in str(ada) and "whsec_" not in str(ada)


def test_cancel_produces_a_cancellation_for_the_callers_tenant(topology: Settings) -> None:
    s = topology

    async def scenario(base: str) -> tuple[int, Any, dict[str, str]]:
        async with aiohttp.ClientSession() as http:
            nid = uuid.uuid4()
            url = f"{base}/v1/notifications/{nid}/cancel"
            return await call(http, "POST", url, key=GLOBEX, json={"recipient": "ada", "reason": "refunded"})

    code, body, _ = asyncio.run(serving(s, scenario))
    assert code == 202
    [cancelled] = [e for e in decoded(s, names(s).requested) if isinstance(e, NotificationCancelled)]
    assert (cancelled.tenant_id, cancelled.recipient_id, cancelled.reason) == ("globex", "ada", "refunded")
    assert str(cancelled.event_id) == body["event_id"]


def test_health_readiness_metrics_and_openapi(topology: Settings) -> None:
    s = topology

    async def scenario(base: str) -> list[tuple[int, Any, dict[str, str]]]:
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                await call(http, "POST", f"{base}/v1/notifications", json=SHIPPED)
            await call(http, "POST", f"{base}/v1/notifications", key=None, json=SHIPPED)
            return [
                await call(http, "GET", f"{base}/healthz", key=None),
                await call(http, "GET", f"{base}/readyz", key=None),
                await call(http, "GET", f"{base}/metrics", key=None),
                await call(http, "GET", f"{base}/openapi.json", key=None),
            ]

    health, ready, metrics, spec = asyncio.run(serving(s, scenario))
    assert health[0] == 200
    assert ready[:2] == (200, {"status": "ready", "checks": {"postgresql:api": "ok", "kafka": "ok"}})
    assert (
        'tidings_edge_requests_total{method="POST",route="/v1/notifications",status="202"} 3.0' in metrics[1]
    )
    assert (
        'tidings_edge_requests_total{method="POST",route="/v1/notifications",status="401"} 1.0' in metrics[1]
    )
    assert "process_resident_memory_bytes" in metrics[1]
    validate(spec[1])
    body = spec[1]["paths"]["/v1/notifications"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/NotificationBody"}


def test_readiness_names_the_dependency_that_does_not_answer(topology: Settings) -> None:
    s = Settings(**(topology.model_dump() | {"postgres_dsn": "postgresql://postgres@127.0.0.1:9/none"}))

    async def scenario(base: str) -> tuple[int, Any, dict[str, str]]:
        async with aiohttp.ClientSession() as http:
            return await call(http, "GET", f"{base}/readyz", key=None)

    code, body, _ = asyncio.run(serving(s, scenario))
    assert code == 503
    assert body["checks"]["kafka"] == "ok"
    assert body["checks"]["postgresql:api"] == "unavailable (TimeoutError)"
    assert "127.0.0.1" not in str(body)


def test_a_tenant_over_its_rate_gets_429_with_retry_after_and_others_do_not(topology: Settings) -> None:
    s = topology
    edge = EdgeSettings(api_keys=SecretStr(KEYS), api_rate=0.01)

    async def scenario(base: str) -> list[tuple[int, Any, dict[str, str]]]:
        url = f"{base}/v1/notifications"
        async with aiohttp.ClientSession() as http:
            return [
                await call(http, "POST", f"{url}/batch", json={"notifications": [SHIPPED] * 100}),
                await call(http, "POST", url, json=SHIPPED),
                await call(http, "POST", url, key=GLOBEX, json=SHIPPED),
            ]

    full, refused, other = asyncio.run(edge_serving(s, scenario, edge))
    assert (full[0], refused[0], other[0]) == (202, 429, 202)
    assert int(refused[2]["Retry-After"]) >= 1
    assert refused[2]["Content-Type"].startswith("application/problem+json")
    requested = [e for e in decoded(s, names(s).requested) if isinstance(e, NotificationRequested)]
    assert sorted(e.tenant_id for e in requested).count("acme") == 100
    assert [e.tenant_id for e in requested].count("globex") == 1


def test_a_recipients_notifications_page_newest_first_per_tenant(database: Settings) -> None:
    s = database
    publish_catalog(s)

    async def posts(base: str) -> list[str]:
        async with aiohttp.ClientSession() as http:
            ids = []
            for i in range(5):
                order = SHIPPED | {"data": {"order": f"A-{i}", "carrier": "DHL"}}
                _, b, _ = await call(http, "POST", f"{base}/v1/notifications", json=order)
                ids.append(b["notification_id"])
                await asyncio.sleep(0.01)
            return ids

    sent = asyncio.run(serving(s, posts))
    run_router(s)
    project(s, "delivery_status")

    async def pages(base: str) -> tuple[list[list[str]], Any, Any]:
        url = f"{base}/v1/recipients/ada/notifications?limit=2"
        found: list[list[str]] = []
        async with aiohttp.ClientSession() as http:
            _, page, _ = await call(http, "GET", url)
            while True:
                found.append([item["notification_id"] for item in page["items"]])
                if page["next"] is None:
                    break
                _, page, _ = await call(http, "GET", f"{url}&before={page['next']}")
            _, other, _ = await call(http, "GET", url, key=GLOBEX)
            bad = await call(http, "GET", f"{url}&before=garbage")
            refused = [
                await call(http, "GET", f"{base}{path}")
                for path in ("/v1/audiences/a%00b", "/v1/audiences/a%00b/members", "/v1/stats?type=a%00b")
            ]
            return found, other, [bad[0], *((status, body["title"]) for status, body, _ in refused)]

    found, other, bad = asyncio.run(serving(s, pages))
    assert found == [sent[4:2:-1], sent[2:0:-1], sent[:1]]
    assert other == {"items": [], "next": None}
    assert bad == [400, *[(400, "Invalid value")] * 3], "a value PostgreSQL refuses is the caller's error"


def test_suppressions_are_listed_per_tenant_and_only_delivery_failures_are_lifted(database: Settings) -> None:
    """An operator sees why an address gets nothing, and lifts a hard bounce (a mailbox restored); an
    unsubscribe or a spam complaint is the recipient's to lift, not the operator's. The router keeps
    suppressions per recipient, so a lift naming a recipient who does not hold the address is refused:
    it was accepted, and the address was listed open while the router kept holding it back."""
    from tidings.client import Client
    from tidings.events import ProviderFeedback

    s = database
    with Client(s) as client:
        for tenant, kind, address, recipient in (
            ("acme", "hard_bounce", "Ada@Example.com", "ada"),
            ("acme", "complaint", "bob@example.com", "ada"),
            ("acme", "hard_bounce", "dan@example.com", "dan"),
            ("globex", "hard_bounce", "cy@example.com", "ada"),
        ):
            client.publish(
                ProviderFeedback(
                    tenant_id=tenant, kind=kind, channel="email", address=address, recipient_id=recipient
                )
            )
        for i in range(25):  # one webhook endpoint or family address, held by many: the lift finds its own
            client.publish(
                ProviderFeedback(
                    tenant_id="acme",
                    kind="hard_bounce",
                    channel="email",
                    address="team@example.com",
                    recipient_id=f"h{i:02d}",
                    provider_timestamp=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=i),
                ),
                wait=False,
            )
    project(s, "suppressions")

    async def scenario(base: str) -> list[tuple[int, Any, dict[str, str]]]:
        lift = f"{base}/v1/recipients/ada/suppressions/lift"
        async with aiohttp.ClientSession() as http:
            return [
                await call(http, "GET", f"{base}/v1/suppressions"),
                await call(http, "GET", f"{base}/v1/suppressions?limit=1"),
                await call(http, "GET", f"{base}/v1/suppressions?after=bogus"),
                await call(http, "GET", f"{base}/v1/suppressions?address=ADA@example.COM"),
                await call(http, "POST", lift, json={"channel": "email", "address": "bob@example.com"}),
                await call(http, "POST", lift, json={"channel": "email", "address": "cy@example.com"}),
                await call(http, "POST", lift, json={"channel": "email", "address": "dan@example.com"}),
                await call(
                    http,
                    "POST",
                    f"{base}/v1/recipients/h24/suppressions/lift",
                    json={"channel": "email", "address": "team@example.com"},
                ),
                await call(
                    http,
                    "POST",
                    lift,
                    json={"channel": "email", "address": "ada@example.com", "reason": "fixed"},
                ),
            ]

    listed, page, bad, found, consent, foreign, other, latest, lifted = asyncio.run(serving(s, scenario))
    assert latest[0] == 202, "the latest of 25 holders found its own suppression"
    assert [r["address"] for r in found[1]["items"]] == ["ada@example.com"], "found without its channel"
    assert [(r["address"], r["reason"]) for r in listed[1]["items"]] == [
        ("ada@example.com", "hard_bounce"),
        ("bob@example.com", "complaint"),
        ("dan@example.com", "hard_bounce"),
        ("team@example.com", "hard_bounce"),
    ]
    assert len(page[1]["items"]) == 1 and page[1]["next"] is not None
    assert (bad[0], consent[0], foreign[0], other[0], lifted[0]) == (400, 409, 404, 409, 202)
    assert other[1]["title"] == "Held for another recipient" and '"dan"' in other[1]["detail"]
    lifts = [e for e in decoded(s, names(s).feedback) if getattr(e, "provider", None) == "api"]
    [feedback] = [e for e in lifts if e.recipient_id == "ada"]
    assert isinstance(feedback, ProviderFeedback) and feedback.kind == "resubscribe"
    assert (feedback.tenant_id, feedback.recipient_id, feedback.detail) == (
        "acme",
        "ada",
        "lifted by the API: fixed",
    )
    project(s, "suppressions")

    async def after(base: str) -> tuple[int, Any, dict[str, str]]:
        async with aiohttp.ClientSession() as http:
            return await call(http, "GET", f"{base}/v1/suppressions")

    assert [r["address"] for r in asyncio.run(serving(s, after))[1]["items"]] == [
        "bob@example.com",
        "dan@example.com",
        "team@example.com",
    ], "24 holders still hold team@"


def test_a_cancellation_naming_another_recipient_than_the_notifications_is_refused(
    database: Settings,
) -> None:
    """It went to that recipient's partition, was told CANCELLED there, and the notification was sent.
    A row only an outcome made (its request not read yet) does not know the recipient: it may be a
    wrong cancel's own CANCELLED."""
    import psycopg

    s = database
    nid, unrequested = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(s.postgres_dsn) as conn:
        conn.execute(
            "INSERT INTO notifications (notification_id, tenant_id, recipient_id, requested_at)"
            " VALUES (%s, 'globex', 'bob', now()), (%s, 'globex', 'cy', NULL)",
            (nid, unrequested),
        )

    async def scenario(base: str) -> list[tuple[int, Any, dict[str, str]]]:
        url = f"{base}/v1/notifications/{nid}/cancel"
        async with aiohttp.ClientSession() as http:
            return [
                *[
                    await call(http, "POST", url, key=GLOBEX, json={"recipient": who})
                    for who in ("ada", "bob")
                ],
                await call(
                    http,
                    "POST",
                    f"{base}/v1/notifications/{unrequested}/cancel",
                    key=GLOBEX,
                    json={"recipient": "ada"},
                ),
            ]

    wrong, right, unknown = asyncio.run(serving(s, scenario))
    assert (wrong[0], right[0], unknown[0]) == (409, 202, 202)
    cancelled = [e for e in decoded(s, names(s).requested) if isinstance(e, NotificationCancelled)]
    assert sorted(c.recipient_id for c in cancelled) == ["ada", "bob"]


def test_a_body_that_makes_a_record_over_the_brokers_limit_is_refused_not_retried(topology: Settings) -> None:
    """A device token of a megabyte fits the body limit but not a record: aiokafka's size check raised,
    and the client was told 503 "retry with the same key", forever."""
    s = topology

    async def scenario(base: str) -> tuple[int, Any, dict[str, str]]:
        async with aiohttp.ClientSession() as http:
            device = {"platform": "fcm", "token": "x" * 1_000_100}
            return await call(http, "PUT", f"{base}/v1/recipients/ada/devices/d1", json=device)

    status, problem_body, _ = asyncio.run(serving(s, scenario))
    assert status == 422, problem_body
    assert "over the 1000000 a record may be" in problem_body["detail"]
    assert decoded(s, names(s).recipients) == []


def test_a_token_registered_for_another_recipient_is_taken_from_the_first(topology: Settings) -> None:
    """A push token names an app install: when bob signs in on ada's old phone, the app registers the
    same token for him, and ada's notifications went on to the phone he now holds."""
    from tests.integration.test_projections import project
    from tidings.client import Client

    s = topology
    publish_catalog(s)
    token = {"platform": "fcm", "token": "shared-install-token"}

    async def register(base: str, recipient: str, device: str, key: str = ACME) -> int:
        async with aiohttp.ClientSession() as http:
            url = f"{base}/v1/recipients/{recipient}/devices/{device}"
            status, _, _ = await call(http, "PUT", url, key=key, json=token)
            return status

    async def first(base: str) -> list[int]:
        return [await register(base, "ada", "d1"), await register(base, "eve", "e1", GLOBEX)]

    assert asyncio.run(serving(s, first)) == [202, 202]
    project(s, "devices")

    async def second(base: str) -> list[int]:
        return [await register(base, "bob", "d2"), await register(base, "bob", "d2")]

    assert asyncio.run(serving(s, second)) == [202, 202]
    removed = [e for e in decoded(s, names(s).recipients) if isinstance(e, DeviceRemoved)]
    assert {(e.tenant_id, e.recipient_id, e.device_id, e.reason) for e in removed} == {
        ("acme", "ada", "d1", "token registered to another recipient")
    }, "bob's own device is not taken, nor another tenant's"
    with Client(s) as client:
        for r in ("ada", "bob"):
            client.send(tenant="acme", recipient=r, type="order.shipped", data={"order": "A", "carrier": "B"})
    run_router(s)
    assert sorted(c.recipient_id for c in commands(s) if c.channel == "push") == ["bob"]
