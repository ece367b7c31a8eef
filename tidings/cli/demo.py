"""`tidings demo`: the whole pipeline that exists, end to end, on the local stack.

Starts the stack, creates topics, publishes the example catalog, registers recipients with preferences,
sends requests with the SDK (one scheduled 15 s ahead, one scheduled and then cancelled, three
likes that the router collects into one digest email, two mentions of which one is seen in the app so
its escalation email is dropped) and one broadcast to an audience of all the recipients, runs the
audience processor and the router until idle, the scheduler until the deferred deliveries are
released, the email gateway (SMTP to a local mail sink), the webhook gateway (to a local receiver that
verifies signatures) and the in-app gateway (the inbox in PostgreSQL), reads ada's inbox through the
HTTP edge with a JWT, clicks one email's one-click unsubscribe link on the HTTP edge, posts the next
order through the HTTP API (`POST /v1/notifications` with an API key) and shows the router honour the
unsubscribe, relays acme's sends and failures to its own endpoint (an outcome destination), shows
the commands and outcomes read back from Kafka, folds the outcomes into PostgreSQL
with the delivery-status projection and reads that order's status back (`GET /v1/notifications/{id}`).
The local receivers are the only stand-ins. Push and SMS go to vendors (FCM, APNs, Twilio, ...) that
need credentials, so those commands stay QUEUED here.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import typer
from rich.console import Console
from rich.table import Table

from tidings import devstack
from tidings.catalog import load, next_versions
from tidings.cli.catalog import published_types
from tidings.cli.demo_edge import API_AUTH, analytics, api_edge, inbox, on_edge, read, unsubscribe
from tidings.client import Client
from tidings.config import Settings, settings
from tidings.devstack.sinks import MailSink, WebhookSink
from tidings.events import (
    CHANNELS,
    DeliveryCommand,
    DeliveryOutcome,
    InboxItemSeen,
    NotificationRequested,
    NotificationTypePublished,
    ProviderFeedback,
)
from tidings.ids import delivery_id
from tidings.kafka import apply_topics
from tidings.topics import names, registry

console = Console(stderr=True)
CATALOG = Path(__file__).resolve().parents[2] / "catalog"
WEBHOOK_SECRET = "whsec_" + "ZGVtby1zZWNyZXQtMTIzNDU2"
RECIPIENTS: list[dict[str, Any]] = [
    {
        "recipient": "ada",
        "email": "ada@example.com",
        "phone": "+4915112345678",
        "locale": "de-AT",
        "name": "Ada",
    },
    {"recipient": "grace", "email": "grace@example.com", "phone": "+14155550123", "name": "Grace"},
    {"recipient": "alan", "email": "alan@example.com", "name": "Alan"},
]
REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("ada", "order.shipped", {"order": "A-1001", "carrier": "DHL"}),
    ("grace", "password.reset", {"link": "https://example.com/r/abc"}),
    ("alan", "comment.mention", {"by": "ada", "thread": "T-7"}),
    ("alan", "order.shipped", {"order": "A-1002", "carrier": "UPS"}),
    ("grace", "invoice.due", {"amount": 129.5, "currency": "EUR"}),
    ("ada", "post.liked", {"by": "Grace", "post": "Notes on the Engine"}),
    ("ada", "post.liked", {"by": "Alan", "post": "Notes on the Engine"}),
    ("ada", "post.liked", {"by": "Grace", "post": "Bernoulli numbers"}),
    ("grace", "comment.mention", {"by": "ada", "thread": "T-8"}),
    ("grace", "comment.mention", {"by": "alan", "thread": "T-9"}),
    *[
        ("grace", "password.reset", {"link": f"https://example.com/r/{code}"})
        for code in ("b", "c", "d", "e")
    ],
]
FAST = "3s"


def fast_rules() -> list[NotificationTypePublished]:
    """Tenant `acme`'s own versions of the digest and escalation types, with windows of seconds instead
    of an hour and five minutes, so the demo need not wait (a tenant's type overrides the shared one)."""
    fast = []
    for t in load(CATALOG, tenant="acme"):
        if t.digest_json:
            fast.append(
                t.model_copy(update={"digest_json": json.dumps(json.loads(t.digest_json) | {"window": FAST})})
            )
        elif t.escalation_json:
            steps = [step | {"after": FAST} for step in json.loads(t.escalation_json)["steps"]]
            fast.append(t.model_copy(update={"escalation_json": json.dumps({"steps": steps})}))
    return fast


def demo(
    rounds: int = typer.Option(1, "--rounds", min=1, help="Send the demo requests this many times."),
    external: bool = typer.Option(
        False,
        "--external",
        help="Run on the services the TIDINGS_* variables name. Never a live deployment: the demo "
        "publishes its example types for every tenant, migrates the database and joins the router's "
        "and the gateways' consumer groups, sending their email to its own mail sink.",
    ),
) -> None:
    """Run the pipeline end to end on the local stack and show what was decided and sent."""
    named = [devstack.EXTERNAL_ENV[svc] for svc in devstack.EXTERNAL_ENV if devstack.is_external(svc)]
    if named and not external:
        console.print(
            f"[red]refused:[/] {', '.join(named)} name services the demo would not start; it would publish "
            "example types over the catalog's, migrate that database and take live commands into its "
            "mail sink. Unset them to use the local stack, or pass --external for a stack of your own."
        )
        raise typer.Exit(2)
    s, n = settings(), names(settings())
    with MailSink() as mail, WebhookSink(WEBHOOK_SECRET) as hooks:
        run_demo(s, n, rounds, mail, hooks)


def run_demo(s: Settings, n: Any, rounds: int, mail: MailSink, hooks: WebhookSink) -> None:
    from processors.audience import Audience
    from processors.members import member_notification_id
    from processors.router import Router
    from processors.scheduler import Scheduler

    console.rule("local stack and topics")
    devstack.up(s, lambda svc, msg: console.print(f"[bold]{svc:<9}[/] {msg}"))
    specs = registry(s)
    created = sum(r.action == "created" for r in apply_topics(s, specs))
    console.print(f"{len(specs)} topics, {created} created now")
    console.rule("catalog, recipients, requests (tidings.client)")
    changed = next_versions([*load(CATALOG), *fast_rules()], published_types())
    sent: dict[str, tuple[str, str]] = {}
    with Client(s, source="demo") as client:
        for t in changed:
            client.publish(t, wait=False)
        for r in RECIPIENTS:
            client.update_recipient(tenant="acme", wait=False, **r)
        client.register_device(
            tenant="acme",
            recipient="ada",
            device_id="pixel",
            platform="fcm",
            token="demo-fcm-token",
            wait=False,
        )
        client.set_webhook_endpoint(
            tenant="acme",
            recipient="grace",
            endpoint_id="billing",
            url=f"http://127.0.0.1:{hooks.port}/grace",
            secret=WEBHOOK_SECRET,
            event_types=["billing"],
            wait=False,
        )
        client.set_destination(
            tenant="acme",
            destination_id="ops",
            url=f"http://127.0.0.1:{hooks.port}/acme/outcomes",
            secret=WEBHOOK_SECRET,
            statuses=["SENT", "FAILED"],
            wait=False,
        )
        client.update_preferences(
            tenant="acme",
            recipient="alan",
            wait=False,
            rules=[{"scope": "category", "key": "social", "channel": "email", "enabled": False}],
        )
        for category in sorted({t.category for t in load(CATALOG)}):
            client.publish(resubscribed("alan", "alan@example.com", category), wait=False)
        client.flush()
        time.sleep(0.2)
        for _ in range(rounds):
            for recipient, type_, data in REQUESTS:
                nid = client.send(tenant="acme", recipient=recipient, type=type_, data=data, wait=False)
                sent[str(nid)] = (recipient, type_)
            seen = next(n for n, (r, t) in reversed(sent.items()) if (r, t) == ("grace", "comment.mention"))
            client.publish(
                InboxItemSeen(
                    tenant_id="acme",
                    recipient_id="grace",
                    notification_id=UUID(seen),
                    delivery_id=delivery_id(UUID(seen), "in_app", "grace"),
                ),
                wait=False,
            )
            sent[seen] = ("grace", "comment.mention (seen in the app)")
        later = datetime.now(UTC) + timedelta(seconds=15)
        data = {"order": "A-1003", "carrier": "GLS"}
        nid = client.send(
            tenant="acme", recipient="alan", type="order.shipped", data=data, scheduled_at=later
        )
        sent[str(nid)] = ("alan", "order.shipped (scheduled)")
        data = {"order": "A-1005", "carrier": "DHL"}
        nid = client.send(
            tenant="acme",
            recipient="ada",
            type="order.shipped",
            data=data,
            scheduled_at=later + timedelta(hours=1),
        )
        client.cancel(tenant="acme", recipient="ada", notification_id=nid, reason="order returned")
        sent[str(nid)] = ("ada", "order.shipped (cancelled)")
        beta = [r["recipient"] for r in RECIPIENTS]
        client.add_members(tenant="acme", audience="beta", recipients=beta, wait=False)
        news = {"title": "Dark mode is here", "body": "Try it in your settings."}
        bid = client.broadcast(tenant="acme", audience="beta", type="product.announcement", data=news)
        for r in beta:
            sent[str(member_notification_id(bid, r))] = (r, "product.announcement (broadcast)")
        client.flush()
    console.print(
        f"catalog: {len(changed)} types published; {len(RECIPIENTS)} recipients; {len(sent)} requests"
    )
    console.rule("audience: broadcasts expanded into one request per member (exactly once)")
    audience = Audience(s, instance="demo")
    audience.run(idle_exit_after=2.0)
    console.print(
        f"audience: 1 broadcast to the {len(RECIPIENTS)} members of 'beta' made "
        f"{audience.expander.requests_made} requests"
    )
    console.rule("router (exactly once) until idle")
    started = time.monotonic()
    router = Router(s, instance="demo")
    router.run(idle_exit_after=3.0)
    console.print(
        f"router: {router.loop.committed_records} records in {time.monotonic() - started:.1f}s "
        f"(including a {FAST} digest window and 3s idle wait), {router.loop.dead_letters} dead letters"
    )
    console.print(
        f"throttle: {router.throttled} of grace's password resets were over the type's limit "
        "(3 per 15 minutes) and SKIPPED"
    )
    digests = [
        r
        for r in read(n.requested)
        if isinstance(r, NotificationRequested) and r.digest_of and str(r.digest_of[0]) in sent
    ]
    for d in digests:
        sent[str(d.notification_id)] = (d.recipient_id, f"post.liked (digest of {len(d.digest_of or [])})")
    console.print(
        f"digest: {sum(len(d.digest_of or []) for d in digests)} likes collected into "
        f"{len(digests)} digest notification(s)"
    )
    console.rule("scheduler (durable timers) until no timer is pending")
    scheduler = Scheduler(s, instance="demo")
    scheduler.run(idle_exit_after=2.5)
    console.print(
        f"scheduler: released {scheduler.released} deferred deliveries when due, "
        f"cancelled {scheduler.cancelled}, dropped {scheduler.escalations_dropped} escalations already seen"
    )
    deliver(s, mail, hooks)
    inbox(s)
    unsubscribe(s, mail, sent)
    relay_outcomes(s, hooks)
    show(sent, n)
    project(sent)


def deliver(s: Settings, mail: MailSink, hooks: WebhookSink) -> None:
    """The email, webhook and in-app gateways until idle, against the local receivers (loopback allowed)
    and the inbox."""
    from gateways.email.smtp import Smtp, SmtpSettings
    from gateways.inapp.inbox import Inbox
    from gateways.runner import GatewayRunner
    from gateways.webhook.standard import StandardWebhook, WebhookSettings
    from projections.db import migrate

    console.rule("gateways: email over SMTP to a local sink, webhooks to a local receiver, the inbox")
    migrate(s.postgres_dsn)

    async def run() -> list[GatewayRunner]:
        smtp = Smtp(SmtpSettings(host="127.0.0.1", port=mail.port, security="none"))
        webhook = StandardWebhook(WebhookSettings(allow_cidrs="127.0.0.1/32"))
        runners = [
            GatewayRunner(s, "email", [smtp]),
            GatewayRunner(s, "webhook", [webhook]),
            GatewayRunner(s, "in_app", [Inbox()]),
        ]
        await asyncio.gather(*(r.run(idle_exit_after=2.0) for r in runners))
        return runners

    email, webhook, in_app = asyncio.run(run())
    unsubscribe = sum("List-Unsubscribe" in m for m in mail.messages)
    console.print(
        f"email: {email.counts.get('sent', 0)} sent; the sink holds {len(mail.messages)} messages "
        f"({unsubscribe} with one-click List-Unsubscribe, critical ones without)"
    )
    for m in mail.messages[:3]:
        console.print(f"  {m['To']:<20} {m['Subject']!s:<40} {m['Message-ID']}")
    console.print(
        f"webhook: {webhook.counts.get('sent', 0)} sent; "
        f"the receiver verified {len(hooks.received)} signatures"
    )
    console.print(f"in_app: {in_app.counts.get('sent', 0)} items put in recipients' inboxes")


def relay_outcomes(s: Settings, hooks: WebhookSink) -> None:
    """acme's sends and failures, POSTed to its own endpoint (its destination `ops`): the relay turns each
    outcome into a webhook command, the webhook gateway signs and sends it."""
    from gateways.runner import GatewayRunner
    from gateways.webhook.standard import StandardWebhook, WebhookSettings
    from processors.relay import Relay

    console.rule("outcome destinations: acme's sends and failures POSTed to its own endpoint")
    before = len(hooks.received)
    relay = Relay(s, instance="demo", from_beginning=True)
    relay.run(idle_exit_after=2.0)

    async def send() -> None:
        webhook = StandardWebhook(WebhookSettings(allow_cidrs="127.0.0.1/32"))
        await GatewayRunner(s, "webhook", [webhook]).run(idle_exit_after=2.0)

    asyncio.run(send())
    events = [
        body for _, body in hooks.received[before:] if str(body.get("type", "")).startswith("delivery.")
    ]
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(Counter(e["type"] for e in events).items()))
    console.print(
        f"relay: {relay.relayed} outcomes became webhooks to acme's destination; "
        f"the receiver verified {len(events)} signatures ({kinds})"
    )


def resubscribed(recipient: str, address: str, category: str) -> ProviderFeedback:
    """Undoes an earlier run's one-click unsubscribe, so the demo can show it again on the same stack."""
    return ProviderFeedback(
        tenant_id="acme",
        kind="resubscribe",
        channel="email",
        address=address,
        recipient_id=recipient,
        provider="demo",
        category=category,
        detail="the demo starts with every recipient subscribed",
    )


def project(sent: dict[str, tuple[str, str]]) -> None:
    """Fold the outcomes into PostgreSQL and read the summaries back, as `tidings status` does."""
    import psycopg

    from projections import Runner
    from projections.db import migrate
    from projections.delivery_status import DeliveryStatus

    console.rule("delivery-status projection (PostgreSQL, exactly once)")
    s = settings()
    migrate(s.postgres_dsn)
    runner = Runner(s, DeliveryStatus())
    try:
        runner.run(idle_exit_after=2.0)
    finally:
        runner.close()
    with psycopg.connect(s.postgres_dsn) as conn:
        rows = conn.execute(
            "SELECT notification_id::text, status FROM notifications WHERE notification_id = ANY(%s)",
            ([*sent],),
        ).fetchall()
    summary = ", ".join(f"{sent[nid][1]}: {status}" for nid, status in sorted(rows, key=lambda r: sent[r[0]]))
    console.print(f"{len(rows)} notifications in PostgreSQL: {summary}")
    if len(rows) != len(sent):
        raise typer.Exit(1)
    nid = next(nid for nid, (_, label) in sent.items() if label.endswith("(after unsubscribe)"))
    code, view = on_edge(s, "GET", f"/v1/notifications/{nid}", api_edge(), headers=API_AUTH)
    steps = ", ".join(f"{e['channel']} {e['status']}" for e in view["timeline"])
    console.print(
        f"api: GET /v1/notifications/{{id}} answered HTTP {code}: {view['notification']['status']}; {steps}"
    )
    analytics(s)


def show(sent: dict[str, tuple[str, str]], n: Any) -> None:
    commands: list[DeliveryCommand] = []
    for channel in CHANNELS:
        for topic in (n.delivery(channel), n.delivery(channel, urgent=True)):
            commands += [
                c for c in read(topic) if isinstance(c, DeliveryCommand) and str(c.notification_id) in sent
            ]
    outcomes = [
        o for o in read(n.outcomes) if isinstance(o, DeliveryOutcome) and str(o.notification_id) in sent
    ]
    table = Table("recipient", "type", "channel", "status", "detail")
    for o in sorted(outcomes, key=lambda o: (sent[str(o.notification_id)], o.channel or "", o.occurred_at)):
        recipient, type_ = sent[str(o.notification_id)]
        command = next((c for c in commands if c.delivery_id == o.delivery_id), None)
        detail = (
            (command.content.subject or command.content.title or command.content.body or "")
            if command
            else ""
        )
        table.add_row(
            recipient,
            type_,
            o.channel or "-",
            o.status + (f" ({o.reason})" if o.reason else ""),
            detail if command else (o.detail or ""),
        )
    Console().print(table)
    planned = {str(o.notification_id) for o in outcomes}
    if planned != set(sent):
        console.print(f"[red]{len(set(sent) - planned)} of {len(sent)} requests have no outcome[/]")
        raise typer.Exit(1)
    console.print(
        f"[green]{len(sent)} requests planned: {len(commands)} delivery commands, "
        f"{len(outcomes)} outcomes[/] (push and SMS need vendor credentials: those stay QUEUED)"
    )
