"""Consumes recipients' inbox requests over HTTP and WebSocket; produces engagement events to
notifications.engagement.

The end-user side of the in-app channel, mounted on the edge when `TIDINGS_EDGE_INBOX_JWT_SECRET` is
set. The customer's backend signs each user an HS256 JWT with `sub` (the recipient id), `tenant` and
`exp`; every route below requires one (`Authorization: Bearer ...`, or the WebSocket's first frame).
Each tenant signs with its own key, derived from that secret (`tidings.client.inbox_signing_key`,
`tidings tenant-key TENANT`): with one shared secret any tenant could sign itself into another's inboxes.

- `GET /v1/inbox?limit=20&before=<cursor>&archived=false`: the newest items first, with their seen,
  read and archived times, the unread count and the cursor of the next page.
- `POST /v1/inbox/{notification_id}/seen|read|archived|unread|unarchived`: produces InboxItemSeen,
  Read, Archived, MarkedUnread or Unarchived (202 once Kafka acknowledged it). The `inbox` projection
  folds them into the feed, and the scheduler drops the escalations the first three satisfy ("email me
  if I have not seen it in 5 minutes"); marking an item unread again does not bring them back. An item
  that is not the caller's is 404, as is one that does not exist.
- `POST /v1/inbox/all/seen|read|archived`: the same for every item of the feed (not archived) that is
  not seen, read or archived yet, newest first, at most `MAX_BULK` per call: `{"marked": n, "more":
  true, "next": cursor}` says to call again with `?before=<cursor>`, which goes on past the items just
  marked even before the projection has folded them. One event per item, so escalations, statistics
  and destinations see each one as if marked alone.
- `POST /v1/me/deliveries/{delivery_id}/opened|clicked` (`{"url": ...}` optional for a click): an app
  reports that its user opened a push (the payload carries the notification and delivery ids) or any
  other delivery to them; produces NotificationOpened/Clicked with the delivery's channel, which the
  scheduler counts as read (escalations stop) and the inbox projection folds. A delivery that is not
  the caller's, or not yet in the delivery-status projection, is 404.
- `GET /v1/ws`: a WebSocket. The first frame is `{"token": "...", "cursor": 123}` (cursor optional),
  within 10 s, else the socket closes with 4401. The server answers `{"type": "items", "items": [...],
  "cursor": n}` with everything after the cursor (or the newest 20), 100 items a frame, then again
  whenever the recipient's Redis doorbell rings, and at least every 30 s. PostgreSQL not answering
  closes the socket with 1013 (try again later), and the client reconnects with its cursor. aiohttp
  pings every 25 s. On the same looks, items this socket sent that were withdrawn since (their
  notification was cancelled) are named in `{"type": "withdrawn", "ids": [...], "cursors": [...]}`,
  once each, so a live view can drop them.

Doorbells: one Redis pattern subscription per edge process fans out to its sockets; after a Redis
reconnect every socket re-reads, so a lost doorbell costs latency, never an item. Each read also looks
`LOOKBACK_S` back in time and skips what the socket already sent, because two gateway processes can
commit a recipient's items out of `seq` order (an urgent and a standard one in the same instant). A
resumed socket's first read is exactly what follows its cursor, and it counts the items at or before its
cursor as had (it may have had them on the socket it replaces): a reconnect repeats no item, at the price
of one committed out of order just before it, which the feed's pages still show. The greeting's cursor
is the recipient's newest item, archived or not, so the first look sends only what came after it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import jwt
from aiohttp import WSMsgType, web
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateways import _pg as pg
from gateways.inapp._doorbells import Doorbells
from gateways.inapp._feed import (
    BULK,
    DELIVERY,
    MARK,
    PAGE,
    SINCE,
    UNREAD,
    WITHDRAWN,
    doorbell,
    item,
)
from gateways.inapp._http import TOKEN_LEEWAY_S, action, refused
from gateways.inapp._http import recipient_of as recipient_of
from gateways.limits import Pace
from gateways.ops import OPERATIONS, Operation
from tidings.config import Settings
from tidings.events import (
    InboxItemArchived,
    InboxItemMarkedUnread,
    InboxItemRead,
    InboxItemSeen,
    InboxItemUnarchived,
    NotificationClicked,
    NotificationOpened,
)
from tidings.kafka import Output
from tidings.kafka.aio import AsyncProducer
from tidings.topics import names

log = logging.getLogger(__name__)
ACTIONS = {
    "seen": InboxItemSeen,
    "read": InboxItemRead,
    "archived": InboxItemArchived,
    "unread": InboxItemMarkedUnread,
    "unarchived": InboxItemUnarchived,
}
REPORTS: dict[str, type[NotificationOpened] | type[NotificationClicked]] = {
    "opened": NotificationOpened,
    "clicked": NotificationClicked,
}
OWN_DELIVERY = """SELECT notification_id, channel FROM deliveries
WHERE delivery_id = %s AND tenant_id = %s AND recipient_id = %s"""
MAX_URL = 2048
MARKS_PER_S = 10.0
"""Engagement events one recipient may produce a second on one edge, after a burst of `MARKS_BURST` (a
mark-all of a full page): each is a Kafka record and a webhook to every destination of the tenant, and
a token's holder looping `/read` produced them without bound. Over it: 429 with `Retry-After`."""
MARKS_BURST = 1000
AUTH_TIMEOUT_S, REREAD_S, LOOKBACK_S, FIRST_PAGE, MAX_PAGE, MAX_BULK = 10.0, 30.0, 5.0, 20, 100, 1000
KEPT = 500
UNAUTHORIZED = 4401
TRY_AGAIN_LATER = 1013
POLICY_VIOLATION = 1008
MAX_SOCKETS = 20
"""Sockets one recipient may hold open on one edge (tabs, devices): each looks at the feed every 30 s
and on every doorbell, from one pool of 8 connections, and one token opening thousands filled it, so
every other recipient's socket closed with 1013. One more is closed with 1008."""
POOL: web.AppKey[AsyncConnectionPool] = web.AppKey("inbox_pool", AsyncConnectionPool)


DOORBELLS: web.AppKey[Doorbells] = web.AppKey("inbox_doorbells", Doorbells)


def mount(
    application: web.Application, settings: Settings, secret: str, producer: web.AppKey[AsyncProducer]
) -> None:
    prefix, engagement = settings.topic_prefix, names(settings).engagement
    pace = Pace(MARKS_PER_S, MARKS_BURST)
    sockets: dict[tuple[str, str], int] = {}

    def caller(request: web.Request) -> tuple[str, str]:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        found = recipient_of(token, secret) if scheme.lower() == "bearer" else None
        if found is None:
            raise refused(web.HTTPUnauthorized, "A valid token is required", WWW_Authenticate="Bearer")
        pg.TENANT.set(found[0])
        return found

    def marking(request: web.Request, cost: int = 1) -> tuple[str, str]:
        """The caller, if its recipient may produce `cost` more engagement events now (`MARKS_PER_S`)."""
        tenant, recipient = caller(request)
        if (wait := pace.take((tenant, recipient), cost)) is not None:
            why = f"at most {MARKS_PER_S:g} marks a second for one recipient"
            raise refused(web.HTTPTooManyRequests, "Too many marks", why, Retry_After=str(math.ceil(wait)))
        return tenant, recipient

    async def query(sql: str, args: dict[str, Any] | tuple[Any, ...]) -> list[tuple[Any, ...]]:
        async with application[POOL].connection() as conn:
            return await (await conn.execute(sql, args)).fetchall()

    async def feed(request: web.Request) -> web.Response:
        tenant, recipient = caller(request)
        try:
            limit = min(max(int(request.query.get("limit", FIRST_PAGE)), 1), MAX_PAGE)
            before = int(request.query["before"]) if "before" in request.query else None
        except ValueError:
            raise refused(web.HTTPBadRequest, "Bad query", "limit and before are integers") from None
        archived = request.query.get("archived", "false").lower() in ("1", "true", "yes")
        who = {"tenant": tenant, "recipient": recipient}
        rows = await query(PAGE, who | {"archived": archived, "before": before, "limit": limit})
        [(unread,)] = await query(UNREAD, who)
        items = [item(r) for r in rows]
        after = items[-1]["cursor"] if len(items) == limit else None
        return web.json_response({"items": items, "unread": unread, "next": after})

    async def engage(request: web.Request) -> web.Response:
        tenant, recipient = marking(request)
        kind, nid = action(request, ACTIONS, "notification_id")
        rows = await query(DELIVERY, {"tenant": tenant, "recipient": recipient, "nid": nid})
        if not rows:
            raise refused(web.HTTPNotFound, "Not found", "no such item in this inbox")
        event = kind(tenant_id=tenant, recipient_id=recipient, notification_id=nid, delivery_id=rows[0][0])
        await request.app[producer].deliver(Output.event(engagement, event))
        return web.json_response({"status": "accepted", "event_id": str(event.event_id)}, status=202)

    async def engage_all(request: web.Request) -> web.Response:
        tenant, recipient = caller(request)
        name = request.match_info["action"]
        if name not in BULK:
            raise refused(web.HTTPNotFound, "Not found")
        try:
            before = int(request.query["before"]) if "before" in request.query else None
        except ValueError:
            raise refused(web.HTTPBadRequest, "Bad query", "before is an integer") from None
        who = {"tenant": tenant, "recipient": recipient}
        rows = await query(BULK[name], who | {"before": before, "limit": MAX_BULK + 1})
        first: dict[UUID, UUID] = {}
        for nid, did, _ in reversed(rows[:MAX_BULK]):
            first.setdefault(nid, did)
        kind = ACTIONS[name]
        events = [
            kind(tenant_id=tenant, recipient_id=recipient, notification_id=nid, delivery_id=did)
            for nid, did in first.items()
        ]
        marking(request, len(events))
        await request.app[producer].deliver(*(Output.event(engagement, e) for e in events))
        more = len(rows) > MAX_BULK
        after = rows[MAX_BULK - 1][2] if more else None
        body = {"status": "accepted", "marked": len(events), "more": more, "next": after}
        return web.json_response(body, status=202)

    async def report(request: web.Request) -> web.Response:
        tenant, recipient = marking(request)
        kind, did = action(request, REPORTS, "delivery_id")
        url = None
        if kind is NotificationClicked and request.can_read_body:
            try:
                url = (await request.json()).get("url")
            except (ValueError, AttributeError, LookupError, RecursionError):
                raise refused(
                    web.HTTPBadRequest, "Bad body", 'the body is {"url": "https://..."} or nothing'
                ) from None
            if url is not None and (not isinstance(url, str) or len(url) > MAX_URL):
                raise refused(
                    web.HTTPBadRequest, "Bad body", f"url is a string of at most {MAX_URL} characters"
                )
        rows = await query(OWN_DELIVERY, (did, tenant, recipient))
        if not rows:
            raise refused(web.HTTPNotFound, "Not found", "no such delivery to this recipient")
        nid, channel = rows[0]
        fields = {"tenant_id": tenant, "recipient_id": recipient, "notification_id": nid, "delivery_id": did}
        event = kind(**fields, channel=channel, **({"url": url} if url else {}))
        await request.app[producer].deliver(Output.event(engagement, event))
        return web.json_response({"status": "accepted", "event_id": str(event.event_id)}, status=202)

    async def socket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=25.0, max_msg_size=64 * 1024)
        await ws.prepare(request)
        try:
            hello = await asyncio.wait_for(ws.receive(), AUTH_TIMEOUT_S)
            first = json.loads(hello.data) if hello.type == WSMsgType.TEXT else {}
            found = recipient_of(str(first.get("token", "")), secret) if isinstance(first, dict) else None
        except (TimeoutError, ValueError, RecursionError):
            found = None
        if found is None:
            await ws.close(code=UNAUTHORIZED, message=b"unauthorized")
            return ws
        tenant, recipient = found
        pg.TENANT.set(tenant)
        if sockets.get(found, 0) >= MAX_SOCKETS:
            await ws.close(code=POLICY_VIOLATION, message=b"too many sockets for this recipient")
            return ws
        until = float(jwt.decode(first["token"], options={"verify_signature": False})["exp"]) + TOKEN_LEEWAY_S
        cursor = first.get("cursor")
        channel = doorbell(prefix, tenant, recipient)
        bell = application[DOORBELLS].register(channel)
        who = {"tenant": tenant, "recipient": recipient}
        sockets[found] = sockets.get(found, 0) + 1
        try:
            resumed = isinstance(cursor, int) and not isinstance(cursor, bool) and abs(cursor) < 2**63
            mark = who | {"cursor": cursor if resumed else None, "lookback": LOOKBACK_S, "limit": KEPT}
            [(latest, recent)] = await query(MARK, mark)
            if isinstance(cursor, int) and resumed and cursor > (latest or 0):
                cursor = latest or 0
            sent = dict.fromkeys(recent, time.monotonic())
            if not resumed:
                rows = await query(PAGE, who | {"archived": False, "before": None, "limit": FIRST_PAGE})
                cursor = max([latest or 0, *(r[0] for r in rows)])
                sent.update(dict.fromkeys((r[0] for r in rows), time.monotonic()))
                await ws.send_json(
                    {"type": "items", "items": [item(r) for r in reversed(rows)], "cursor": cursor}
                )
            greeted = not resumed
            async for _ in rings(ws, bell, until):
                full = True
                while full:
                    lookback = LOOKBACK_S if greeted else 0.0
                    look = who | {"after": cursor, "lookback": lookback, "limit": MAX_PAGE}
                    rows = await query(SINCE, look | {"sent": sorted(sent)})
                    full = len(rows) == MAX_PAGE
                    fresh = sorted((r for r in rows if r[0] not in sent), key=lambda r: r[0])
                    cursor = max([cursor, *(r[0] for r in fresh)])
                    if fresh or not greeted:
                        items = [item(r) for r in fresh]
                        await ws.send_json({"type": "items", "items": items, "cursor": cursor})
                        greeted = True
                    sent.update(dict.fromkeys((r[0] for r in fresh), time.monotonic()))
                gone = await query(WITHDRAWN, who | {"seqs": sorted(sent)}) if sent else []
                if gone:
                    ids = sorted({str(r[1]) for r in gone})
                    await ws.send_json(
                        {"type": "withdrawn", "ids": ids, "cursors": sorted(r[0] for r in gone)}
                    )
                    for r in gone:
                        sent.pop(r[0], None)
                if len(sent) > 2 * KEPT:
                    sent = kept(sent)
        except (pg_errors.OperationalError, PoolTimeout) as exc:
            log.warning("PostgreSQL did not answer a socket's look: %s", exc)
            await ws.close(code=TRY_AGAIN_LATER, message=b"the inbox is unavailable")
        finally:
            application[DOORBELLS].unregister(channel, bell)
            if (left := sockets.pop(found) - 1) > 0:
                sockets[found] = left
        return ws

    async def resources(app: web.Application) -> AsyncIterator[None]:
        bounded = pg.bounded(settings.postgres_dsn)
        app[POOL] = pg.pool(
            settings.postgres_dsn, min_size=1, max_size=8, timeout=10, checked=True, kwargs=bounded
        )
        await app[POOL].open()
        app[DOORBELLS] = bells = Doorbells(settings.redis_url, prefix)
        bells.task = asyncio.create_task(bells.listen())
        yield
        await bells.stop()
        await app[POOL].close()

    application.cleanup_ctx.append(resources)
    application.router.add_get("/v1/inbox", feed)
    application.router.add_post("/v1/inbox/all/{action}", engage_all)
    application.router.add_post("/v1/inbox/{notification_id}/{action}", engage)
    application.router.add_get("/v1/ws", socket)
    application.router.add_post("/v1/me/deliveries/{delivery_id}/{action}", report)
    token = "recipientToken"
    application.setdefault(OPERATIONS, []).extend(
        [
            Operation(
                "GET",
                "/v1/inbox",
                feed,
                "My inbox, newest first",
                security=token,
                query=("limit", "before", "archived"),
            ),
            Operation(
                "POST",
                "/v1/inbox/all/{action}",
                engage_all,
                "Mark every item not yet seen, read or archived",
                status=202,
                security=token,
                rated=True,
                query=("before",),
            ),
            Operation(
                "POST",
                "/v1/inbox/{notification_id}/{action}",
                engage,
                "Mark seen, read, archived, unread or unarchived",
                status=202,
                security=token,
                rated=True,
            ),
            Operation(
                "GET", "/v1/ws", socket, "WebSocket: send {token, cursor?} first", status=101, security=token
            ),
            Operation(
                "POST",
                "/v1/me/deliveries/{delivery_id}/{action}",
                report,
                "Report a push (or other delivery) opened or clicked",
                status=202,
                security=token,
                rated=True,
            ),
        ]
    )


def kept(sent: dict[int, float]) -> dict[int, float]:
    """Of the items a socket sent (seq: monotonic time sent), the newest KEPT, for withdrawal notices,
    and any sent within two lookbacks, which a read may still return: dropping one of those sent it again.
    By the socket's own items, since `seq` is one sequence for every recipient's."""
    newest, recent = set(sorted(sent)[-KEPT:]), time.monotonic() - 2 * LOOKBACK_S
    return {seq: at for seq, at in sent.items() if seq in newest or at > recent}


async def rings(ws: web.WebSocketResponse, bell: asyncio.Event, until: float) -> AsyncIterator[None]:
    """Yield once at once, then on every ring of the bell (or every REREAD_S), until the socket closes
    or its token expires (epoch seconds `until`): then close 4401, and the client reconnects with a
    fresh token and its cursor. A socket must not go on pushing a recipient's items past the token's
    life, which is what its issuer gave it."""
    reader = asyncio.create_task(drain(ws))
    try:
        while not reader.done():
            if time.time() >= until:
                await ws.close(code=UNAUTHORIZED, message=b"token expired")
                return
            bell.clear()
            yield
            waiter = asyncio.create_task(bell.wait())
            wait = max(0.0, min(REREAD_S, until - time.time()))
            await asyncio.wait({waiter, reader}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
    finally:
        reader.cancel()


async def drain(ws: web.WebSocketResponse) -> None:
    """Read the client's frames until it closes; clients only listen, so their messages are ignored."""
    async for message in ws:
        if message.type == WSMsgType.ERROR:
            break
