"""The API's pure parts: key parsing and lookup, the recipient view's redaction, the generated OpenAPI,
the inbox tokens' per-tenant keys."""

import asyncio
import base64
import inspect
import re
import time
import uuid
from datetime import UTC, datetime

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st
from openapi_spec_validator import validate
from pydantic import SecretStr, ValidationError
from typer.testing import CliRunner

from gateways import api, api_schema, ops, suppressions_api
from gateways.edge import EdgeSettings, app
from gateways.feed import recipient_of
from processors.recipients import Device, RecipientState, Suppression, WebhookEndpoint
from tidings import cli
from tidings.client import inbox_signing_key, inbox_token, tenant_key
from tidings.config import Settings
from tidings.errors import KafkaUnavailable, TidingsError

KEY = "k" * 24


def test_keys_map_to_tenants_and_short_keys_are_refused() -> None:
    assert api.parse_keys(f"acme:{KEY}, globex:{KEY}x,") == {KEY: "acme", KEY + "x": "globex"}
    for spec in ("acme:short", f":{KEY}", "no-colon"):
        with pytest.raises(ValueError, match="tenant:key"):
            api.parse_keys(spec)
    with pytest.raises(ValueError, match="two tenants"):
        api.parse_keys(f"acme:{KEY},globex:{KEY}")
    with pytest.raises(ValueError, match="not a valid tenant id"):
        api.parse_keys(f"ac/me:{KEY}")


def test_only_a_bearer_with_a_configured_key_names_a_tenant() -> None:
    keys = {KEY: "acme"}
    assert api.tenant_of(f"Bearer {KEY}", keys) == "acme"
    assert api.tenant_of(f"bearer {KEY}", keys) == "acme"
    assert api.tenant_of(f"Basic {KEY}", keys) is None
    assert api.tenant_of(f"Bearer {KEY[:-1]}", keys) is None
    assert api.tenant_of("Bearer ", keys) is None
    assert api.tenant_of("", keys) is None
    assert api.tenant_of("Bearer \udcff\udcfe", keys) is None


def test_the_recipient_view_leaves_out_tokens_keys_and_secrets() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    state = RecipientState(
        email="ada@example.com",
        devices={
            "d": Device(platform="webpush", token="tok-123", keys={"auth": "auth-456"}, registered_at=at)
        },
        webhooks={"w": WebhookEndpoint(url="https://example.com/h", secret="whsec_789")},
    )
    view = api_schema.recipient_view(state)
    assert view["suppressions"] == {}
    dead = Suppression(reason="token_invalid", since=at)
    gone = state.model_copy(
        update={"suppressions": {"push:tok-123": dead, "push:tok-gone": dead, "email:ada@example.com": dead}}
    )
    assert set(api_schema.recipient_view(gone)["suppressions"]) == {"push:device/d", "email:ada@example.com"}
    assert "tok-" not in str(api_schema.recipient_view(gone))
    assert view["contacts"]["email"] == "ada@example.com"
    assert view["devices"]["d"]["platform"] == "webpush"
    assert view["webhooks"]["w"]["url"] == "https://example.com/h"
    assert not any(secret in str(view) for secret in ("tok-123", "auth-456", "whsec_789"))


def test_the_openapi_document_is_valid_and_covers_every_mounted_route() -> None:
    edge = EdgeSettings(api_keys=SecretStr(f"acme:{KEY}"), inbox_jwt_secret=SecretStr("s" * 32))
    application = app(Settings(), edge=edge)
    document = ops.openapi(application[ops.OPERATIONS], api_schema.Accepted)
    validate(document)
    operational = ("/unsubscribe/", "/t/", "/healthz", "/readyz", "/metrics", "/openapi.json")
    mounted = {
        (r.method, r.resource.canonical)
        for r in application.router.routes()
        if r.resource and r.method != "HEAD" and not r.resource.canonical.startswith(operational)
    }
    documented = {(m.upper(), p) for p, item in document["paths"].items() for m in item}
    assert documented == mounted
    assert "NotificationBody" in document["components"]["schemas"]
    inbox = document["paths"]["/v1/inbox"]["get"]
    assert inbox["security"] == [{"recipientToken": []}]
    assert "security" not in document["paths"]["/v1/notifications"]["post"]  # the document's default: apiKey


def test_the_openapi_document_names_every_query_parameter_and_header_a_handler_reads() -> None:
    """Read from each handler's source, so a parameter added to a handler and not to its Operation
    fails here."""
    edge = EdgeSettings(api_keys=SecretStr(f"acme:{KEY}"), inbox_jwt_secret=SecretStr("s" * 32))
    operations = app(Settings(), edge=edge)[ops.OPERATIONS]
    document = ops.openapi(operations, api_schema.Accepted)
    reads = re.compile(r'(?:query|q)(?:\.get\(|\[)"(\w+)"|_time\(request, "(\w+)"\)|header_key\((request)\)')
    for op in operations:
        found = {a or b or "Idempotency-Key" for a, b, c in reads.findall(inspect.getsource(op.handler))}
        entry = document["paths"][op.path][op.method.lower()]
        named = {p["name"] for p in entry["parameters"] if p["in"] in ("query", "header")}
        assert found == named, f"{op.method} {op.path}"
        rated = any(gate in inspect.getsource(op.handler) for gate in ("admit(", "marking("))
        assert ("429" in entry["responses"]) == rated, f"{op.method} {op.path}: a 429 it cannot answer"
    notify = document["paths"]["/v1/notifications"]["post"]
    assert {"429", "503"} <= set(notify["responses"])
    suppressions = document["paths"]["/v1/suppressions"]["get"]
    names = [p["name"] for p in suppressions["parameters"]]
    assert names == ["channel", "active", "address", "limit", "after"]


def test_kafka_not_acknowledging_is_a_503_problem_and_is_counted() -> None:
    async def refused(_: web.Request) -> web.Response:
        raise KafkaUnavailable("no broker answered")

    async def scenario() -> tuple[int, str, dict[str, str], str]:
        application = web.Application()
        application.router.add_post("/v1/notifications", refused)
        ops.mount(application, api_schema.Accepted)
        async with TestClient(TestServer(application)) as client:
            r = await client.post("/v1/notifications")
            metrics = await (await client.get("/metrics")).text()
            return r.status, r.headers["Content-Type"], await r.json(content_type=None), metrics

    status, content_type, document, metrics = asyncio.run(scenario())
    assert (status, document["title"]) == (503, "Not accepted")
    assert content_type.startswith("application/problem+json")
    assert 'tidings_edge_requests_total{method="POST",route="/v1/notifications",status="503"} 1.0' in metrics


@given(st.datetimes(timezones=st.just(UTC)), st.uuids())
def test_history_cursors_round_trip(at: datetime, nid: uuid.UUID) -> None:
    assert api.parse_cursor(api.cursor(at.isoformat(), str(nid))) == (at, nid)


@pytest.mark.parametrize(
    "text", ["garbage", "", "bm90IGEgY3Vyc29y", api.cursor("2026-01-01T00:00:00+00:00", "x")]
)
def test_a_cursor_that_history_did_not_give_out_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        api.parse_cursor(text)


@pytest.mark.parametrize(
    "raw",
    [b"garbage", b"[1, 2, 3]", b"[" * 100_000, b"\xff", b'["email", "\\ud800"]'],
    ids=["text", "three", "nested", "binary", "surrogate"],
)
def test_a_suppressions_cursor_no_page_gave_out_is_a_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        suppressions_api.parse_cursor(base64.urlsafe_b64encode(raw).decode())


def test_an_inbox_token_names_its_tenant_only_when_that_tenants_key_signed_it() -> None:
    master = "m" * 32
    acme, globex = inbox_signing_key(master, "acme"), inbox_signing_key(master, "globex")
    assert len({acme, globex, master}) == 3
    assert recipient_of(inbox_token(acme, tenant="acme", recipient="ada"), master) == ("acme", "ada")
    assert recipient_of(inbox_token(acme, tenant="globex", recipient="bob"), master) is None
    assert recipient_of(inbox_token(master, tenant="acme", recipient="ada"), master) is None
    assert recipient_of(inbox_token(globex, tenant="globex", recipient="bob"), "n" * 32) is None
    untenanted = jwt.encode({"sub": "ada", "exp": int(time.time()) + 60}, acme, algorithm="HS256")
    assert recipient_of(untenanted, master) is None
    assert recipient_of("Bearer \udcff\udcfe", master) is None
    assert recipient_of("", master) is None


def test_the_cli_prints_a_tenants_keys_and_refuses_without_the_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TIDINGS_EDGE_INBOX_JWT_SECRET", "m" * 32)
    monkeypatch.setenv("TIDINGS_EDGE_POSTMARK_PASSWORD", "p" * 32)
    printed = CliRunner().invoke(cli.app, ["tenant-key", "acme"])
    assert (printed.exit_code, printed.stdout.strip()) == (0, inbox_signing_key("m" * 32, "acme"))
    postmark = CliRunner().invoke(cli.app, ["tenant-key", "acme", "--for", "postmark"])
    assert postmark.stdout.strip() == tenant_key("p" * 32, "postmark", "acme") != printed.stdout.strip()
    monkeypatch.delenv("TIDINGS_EDGE_INBOX_JWT_SECRET")
    refused = CliRunner().invoke(cli.app, ["tenant-key", "acme"])
    assert isinstance(refused.exception, TidingsError)
    unknown = CliRunner().invoke(cli.app, ["tenant-key", "acme", "--for", "smtp"])
    assert isinstance(unknown.exception, TidingsError)
    slashed = CliRunner().invoke(cli.app, ["tenant-key", "ac/me", "--for", "postmark"])
    assert "not a valid tenant id" in str(slashed.exception)


def test_the_edge_pools_bound_statements_and_keep_the_dsns_own_options() -> None:
    from gateways import _pg as pg

    kept = pg.bounded("host=db dbname=t options='-c search_path=app'")
    assert kept == {"options": "-c search_path=app -c statement_timeout=30000"}
    assert pg.bounded("postgresql://t@127.0.0.1/t", 500) == {"options": "-c statement_timeout=500"}


@pytest.mark.parametrize(
    ("variable", "value", "why"),
    [
        ("TIDINGS_EDGE_POSTMARK_PASSWORD", "short", "at least 32"),
        ("TIDINGS_EDGE_POSTMARK_PASSWORD", "CHANGE-ME-and-make-it-32-characters-long", "placeholder"),
        ("TIDINGS_EDGE_INBOX_JWT_SECRET", "CHANGE-ME-at-least-32-random-characters", "placeholder"),
        ("TIDINGS_EDGE_API_KEYS", "acme:CHANGE-ME-a-random-key-of-32-chars", "placeholder"),
    ],
)
def test_the_edge_refuses_weak_and_example_secrets(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, why: str
) -> None:
    """A tenant holding its derived Postmark password could guess a short master offline and compute
    every other tenant's; the example Secret's placeholders are public, yet passed the length checks."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=why):
        EdgeSettings()


def test_the_unsubscribe_secret_is_the_development_default_or_a_strong_one_of_your_own() -> None:
    from gateways.email._message import DEV_SECRET, EmailSettings

    assert EmailSettings(unsubscribe_secret=SecretStr(DEV_SECRET)).dev_secret
    for weak, why in (("hunter2", "at least 32"), ("CHANGE-ME-at-least-32-random-characters", "placeholder")):
        with pytest.raises(ValidationError, match=why):
            EmailSettings(unsubscribe_secret=SecretStr(weak))
