"""`tidings recipients set|erase|export` and `tidings run <component>`."""

from __future__ import annotations

import json
import logging
import signal
import socket
import time
from typing import Any, Protocol

import typer
from rich.console import Console

from tidings.client import Client, recipient_update, tenant_key
from tidings.config import settings
from tidings.erasure import CATCH_UP_S, MEMBERSHIPS, STORED, behind
from tidings.errors import TidingsError
from tidings.events import Event, PreferencesUpdated, validated
from tidings.kafka import end_offsets
from tidings.metrics import Sample, Source, serve
from tidings.topics import names

recipients_app = typer.Typer(no_args_is_help=True, help="Recipient contacts, preferences and devices.")
run_app = typer.Typer(no_args_is_help=True, help="Run one component in the foreground.")
console = Console(stderr=True)


@recipients_app.command("set")
def set_recipient(
    tenant: str = typer.Option(..., "--tenant", "-t"),
    recipient: str = typer.Option(..., "--recipient", "-r"),
    email: str | None = typer.Option(None),
    phone: str | None = typer.Option(None, help="E.164"),
    locale: str | None = typer.Option(None),
    timezone: str | None = typer.Option(None, help="IANA zone"),
    name: str | None = typer.Option(None),
    muted: bool | None = typer.Option(None, "--muted/--unmuted"),
    opt_out: list[str] = typer.Option(None, "--opt-out", help="category:KEY[:CHANNEL] or type:KEY[:CHANNEL]"),
    opt_in: list[str] = typer.Option(None, "--opt-in", help="category:KEY[:CHANNEL] or type:KEY[:CHANNEL]"),
    quiet: str | None = typer.Option(None, "--quiet-hours", help="HH:MM-HH:MM in the recipient's zone"),
    digest: list[str] = typer.Option(
        None,
        "--digest",
        help="CATEGORY=off|hourly|daily|weekly (daily/weekly: 09:00 in the recipient's zone)",
    ),
) -> None:
    """Produce RecipientUpdated and/or PreferencesUpdated for one recipient."""
    profile: dict[str, Any] = {
        k: v
        for k, v in {
            "email": email,
            "phone": phone,
            "locale": locale,
            "timezone": timezone,
            "name": name,
        }.items()
        if v is not None
    }
    rules = [_rule(r, False) for r in opt_out or []] + [_rule(r, True) for r in opt_in or []]
    prefs: dict[str, Any] = {"rules": rules} if rules else {}
    if muted is not None:
        prefs["muted"] = muted
    if quiet:
        start, _, end = quiet.partition("-")
        prefs["quiet_hours"] = {"start": start, "end": end}
    if digest:
        prefs["digest"] = dict(d.partition("=")[::2] for d in digest)
    if not profile and not prefs:
        raise typer.BadParameter("nothing to set: give a contact point, a preference or both (see --help)")
    events: list[Event] = []
    if profile:
        events.append(recipient_update(tenant=tenant, recipient=recipient, **profile))
    if prefs:
        events.append(validated(PreferencesUpdated, tenant_id=tenant, recipient_id=recipient, **prefs))
    with Client(source="cli") as client:
        for event in events:
            client.publish(event)
    console.print(f"[green]updated[/] {tenant}/{recipient}: {json.dumps(profile | prefs)}")


@recipients_app.command("erase")
def erase_recipient(
    tenant: str = typer.Option(..., "--tenant", "-t"),
    recipient: str = typer.Option(..., "--recipient", "-r"),
    reason: str | None = typer.Option(None, help="kept for the audit trail (a ticket id); no personal data"),
) -> None:
    """Erase a recipient's personal data (GDPR Art. 17): remove it from its audiences (read from the
    audiences projection) and produce RecipientErased; docs/architecture.md says what is erased."""
    import psycopg

    topic = names(settings()).broadcasts
    ends = end_offsets(settings(), topic)
    deadline = time.monotonic() + CATCH_UP_S
    try:
        with psycopg.connect(settings().postgres_dsn, connect_timeout=10, autocommit=True) as conn:
            while (
                lag := behind(ends, conn.execute(STORED, (topic,)).fetchall())
            ) and time.monotonic() < deadline:
                time.sleep(0.25)
            audiences = [a for (a,) in conn.execute(MEMBERSHIPS, (tenant, recipient)).fetchall()]
    except psycopg.Error as exc:
        raise TidingsError(f"cannot read the recipient's audiences from PostgreSQL: {exc}") from exc
    if lag:
        raise TidingsError(
            f"the audiences projection has {lag} membership records to apply, so {recipient}'s audiences "
            "are not all known: run `tidings run projection audiences` until it has caught up, then erase"
        )
    with Client(source="cli") as client:
        client.erase_recipient(tenant=tenant, recipient=recipient, reason=reason, audiences=audiences)
    left = f", removed from {len(audiences)} audiences" if audiences else ""
    console.print(f"[yellow]erased[/] {tenant}/{recipient}{left}")


@recipients_app.command("export")
def export_recipient(
    tenant: str = typer.Option(..., "--tenant", "-t"),
    recipient: str = typer.Option(..., "--recipient", "-r"),
    limit: int = typer.Option(1000, min=1, max=10_000, help="newest notifications and in-app items"),
) -> None:
    """Print as JSON everything the projections hold about a recipient (GDPR Art. 15 and 20): contacts,
    preferences, devices, audiences, notifications with deliveries, in-app items, an erasure."""
    import asyncio

    import psycopg

    from gateways.privacy_api import export

    async def read() -> dict[str, Any] | None:
        async with await psycopg.AsyncConnection.connect(settings().postgres_dsn, connect_timeout=10) as conn:
            return await export(conn, tenant, recipient, limit)

    try:
        found = asyncio.run(read())
    except psycopg.Error as exc:
        raise TidingsError(f"cannot read the projections from PostgreSQL: {exc}") from exc
    if found is None:
        raise TidingsError(f"the projections hold nothing about {tenant}/{recipient}")
    print(json.dumps(found, indent=2, ensure_ascii=False))


def expose(component: str, instance: str | None, source: Source) -> None:
    """Serve the component's /metrics when TIDINGS_METRICS_PORT is set."""
    s = settings()
    if s.metrics_port is not None:
        serve(component, instance or socket.gethostname(), source, s.metrics_port, s.metrics_host)
        logging.getLogger(__name__).info("metrics on http://%s:%d/metrics", s.metrics_host, s.metrics_port)


class Component(Protocol):
    def samples(self) -> list[Sample]: ...
    def stop(self) -> None: ...
    def run(self, *, idle_exit_after: float | None = None) -> None: ...


def limit_memory(megabytes: int | None) -> None:
    """`RLIMIT_DATA` (heap and anonymous mappings) from `TIDINGS_MEMORY_LIMIT_MB`, when set."""
    if megabytes is not None:
        import resource

        resource.setrlimit(resource.RLIMIT_DATA, (megabytes * 2**20, resource.RLIM_INFINITY))


def serve_component(name: str, instance: str | None, component: Component, idle_exit: float | None) -> None:
    """Run a processor in the foreground: INFO logs, /metrics when configured, SIGTERM/SIGINT stop it,
    memory capped when configured."""
    logging.getLogger().setLevel(logging.INFO)
    limit_memory(settings().memory_limit_mb)
    expose(name, instance, component.samples)
    signal.signal(signal.SIGTERM, lambda *_: component.stop())
    signal.signal(signal.SIGINT, lambda *_: component.stop())
    component.run(idle_exit_after=idle_exit)


def _rule(text: str, enabled: bool) -> dict[str, Any]:
    scope, _, rest = text.partition(":")
    key, _, channel = rest.partition(":")
    if scope not in ("category", "type") or not key:
        raise typer.BadParameter(f"{text!r}: expected category:KEY[:CHANNEL] or type:KEY[:CHANNEL]")
    return {"scope": scope, "key": key, "channel": channel or None, "enabled": enabled}


@run_app.command("router")
def run_router(
    instance: str | None = typer.Option(None, "--instance", help="Stable slot name, e.g. 0, 1."),
    idle_exit: float | None = typer.Option(None, "--idle-exit", help="Exit after this many idle seconds."),
) -> None:
    """Resolve preferences and plan deliveries (exactly once). Run one per core; scale by adding more."""
    from processors.router import Router

    serve_component("router", instance, Router(settings(), instance=instance), idle_exit)


@run_app.command("scheduler")
def run_scheduler(
    instance: str | None = typer.Option(None, "--instance", help="Stable slot name, e.g. 0, 1."),
    idle_exit: float | None = typer.Option(
        None, "--idle-exit", help="Exit after this many idle seconds with no timer pending."
    ),
) -> None:
    """Release deferred deliveries (quiet hours, scheduled_at) when due, exactly once."""
    from processors.scheduler import Scheduler

    serve_component("scheduler", instance, Scheduler(settings(), instance=instance), idle_exit)


@run_app.command("audience")
def run_audience(
    instance: str | None = typer.Option(None, "--instance", help="Stable slot name, e.g. 0, 1."),
    idle_exit: float | None = typer.Option(
        None, "--idle-exit", help="Exit after this many idle seconds with no broadcast in progress."
    ),
) -> None:
    """Keep audiences' members and expand each broadcast into one request per member, exactly once."""
    from processors.audience import Audience

    serve_component("audience", instance, Audience(settings(), instance=instance), idle_exit)


@run_app.command("relay")
def run_relay(
    instance: str | None = typer.Option(None, "--instance", help="Stable slot name, e.g. 0, 1."),
    idle_exit: float | None = typer.Option(None, "--idle-exit", help="Exit after this many idle seconds."),
) -> None:
    """Turn each outcome into webhook commands for its tenant's destinations (the webhook gateway sends)."""
    from processors.relay import Relay

    serve_component("relay", instance, Relay(settings(), instance=instance), idle_exit)


@run_app.command("gateway")
def run_gateway(
    channel: str = typer.Argument(..., help="in_app, push, email, sms or webhook"),
    providers: list[str] = typer.Option(
        None, "--provider", help="Provider chain in order; smtp@backup reads TIDINGS_SMTP_BACKUP_*."
    ),
    idle_exit: float | None = typer.Option(None, "--idle-exit", help="Exit after this many idle seconds."),
) -> None:
    """Send the channel's delivery commands through its provider chain (retries, failover, DLQ)."""
    import asyncio

    from gateways.base import load_providers
    from gateways.runner import GatewayRunner

    available = {name: cls for (ch, name), cls in load_providers().items() if ch == channel}
    chosen = providers or sorted(available)
    if not chosen or any(p.partition("@")[0] not in available for p in chosen):
        raise typer.BadParameter(f"providers for {channel}: {', '.join(sorted(available)) or 'none yet'}")
    chain = [available[p.partition("@")[0]].from_env(p.partition("@")[2] or None) for p in chosen]
    logging.getLogger().setLevel(logging.INFO)
    limit_memory(settings().memory_limit_mb)

    async def main() -> None:
        runner = GatewayRunner(settings(), channel, chain)
        expose(f"gateway-{channel}", None, runner.samples)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, runner.stop)
        await runner.run(idle_exit_after=idle_exit)

    asyncio.run(main())


@run_app.command("api", help="The same as `tidings run edge` (the name the design brief uses for it).")
@run_app.command("edge")
def run_edge(
    port: int | None = typer.Option(None, "--port", help="Default: TIDINGS_EDGE_PORT or 8080."),
) -> None:
    """Serve the HTTP edge: unsubscribe links, provider webhooks, the inbox (with
    TIDINGS_EDGE_INBOX_JWT_SECRET), the API (with TIDINGS_EDGE_API_KEYS), /healthz, /readyz, /metrics."""
    from aiohttp import web

    from gateways.edge import EdgeSettings, app

    edge = EdgeSettings()
    logging.getLogger().setLevel(logging.INFO)
    limit_memory(settings().memory_limit_mb)
    web.run_app(app(settings()), host=edge.host, port=port or edge.port, access_log=None)


def tenant_key_command(
    tenant: str = typer.Argument(..., help="The tenant the key is for."),
    purpose: str = typer.Option("inbox", "--for", help="inbox or postmark."),
) -> None:
    """Print TENANT's own key, derived from the edge's secret: `inbox`, what its backend signs its end
    users' inbox JWTs with (HS256: `sub`, `tenant`, `exp`; from TIDINGS_EDGE_INBOX_JWT_SECRET);
    `postmark`, the basic-auth password of its Postmark webhook URL (from
    TIDINGS_EDGE_POSTMARK_PASSWORD)."""
    from pydantic import TypeAdapter, ValidationError

    from gateways.edge import EdgeSettings
    from tidings.events import TenantId

    try:
        TypeAdapter(TenantId).validate_python(tenant)
    except ValidationError:
        raise TidingsError(f"{tenant!r} is not a valid tenant id") from None
    edge = EdgeSettings()
    masters = {"inbox": edge.inbox_jwt_secret, "postmark": edge.postmark_password}
    if purpose not in masters:
        raise TidingsError(f"--for is one of {', '.join(masters)}")
    master = masters[purpose]
    if master is None:
        variable = "INBOX_JWT_SECRET" if purpose == "inbox" else "POSTMARK_PASSWORD"
        raise TidingsError(f"TIDINGS_EDGE_{variable} is not set")
    typer.echo(tenant_key(master.get_secret_value(), purpose, tenant))
