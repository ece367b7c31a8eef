"""The Standard Webhooks provider against a local receiver verifying with the `standardwebhooks` library."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import uuid4

import aiohttp
from aiohttp import web
from standardwebhooks import Webhook

from gateways.base import (
    DeliveryRejected,
    Provider,
    ProviderThrottled,
    ProviderUnavailable,
    Sent,
    load_providers,
)
from gateways.webhook.standard import StandardWebhook, WebhookSettings
from tidings.events import DeliveryCommand, RenderedContent

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OLD_SECRET = "whsec_" + "b2xkLXNlY3JldC0xMjM0NTY3OA=="
LOCAL = WebhookSettings(allow_cidrs="127.0.0.1/32", read_timeout=0.5, connect_timeout=0.5)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def command(url: str, secret: str = SECRET) -> DeliveryCommand:
    nid = uuid4()
    return DeliveryCommand(
        tenant_id="acme",
        delivery_id=uuid4(),
        notification_id=nid,
        recipient_id="u",
        notification_type="invoice.due",
        channel="webhook",
        priority="normal",
        address=url,
        address_params={"secret": secret, "endpoint_id": "e"},
        content=RenderedContent(data_json='{"amount": 12.5}'),
    )


async def against(
    handler: Handler, cmd_for: Callable[[str], DeliveryCommand], settings: WebhookSettings = LOCAL
) -> tuple[Any, list[web.Request], list[bytes]]:
    seen: list[web.Request] = []
    bodies: list[bytes] = []

    async def wrapped(request: web.Request) -> web.StreamResponse:
        seen.append(request)
        bodies.append(await request.read())
        return await handler(request)

    app = web.Application()
    app.router.add_post("/{tail:.*}", wrapped)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session:
            try:
                result: Any = await StandardWebhook(settings).send(
                    session, cmd_for(f"http://127.0.0.1:{port}/in")
                )
            except Exception as exc:
                result = exc
    finally:
        await runner.cleanup()
    return result, seen, bodies


def run(
    handler: Handler, cmd_for: Callable[[str], DeliveryCommand] = command, settings: WebhookSettings = LOCAL
) -> tuple[Any, list[web.Request], list[bytes]]:
    return asyncio.run(against(handler, cmd_for, settings))


async def ok(request: web.Request) -> web.Response:
    return web.Response(status=204)


def test_the_provider_registers_itself() -> None:
    assert load_providers()[("webhook", "standard")] is StandardWebhook
    assert issubclass(StandardWebhook, Provider)


def test_signed_delivery_verifies_with_the_standard_library() -> None:
    cmd = command("http://placeholder.example/")
    result, seen, bodies = run(ok, lambda url: cmd.model_copy(update={"address": url}))
    assert isinstance(result, Sent) and result.provider_message_id == str(cmd.delivery_id)
    [request] = seen
    assert request.headers["webhook-id"] == str(cmd.delivery_id)
    assert Webhook(SECRET).verify(bodies[0], dict(request.headers)) == {"amount": 12.5}


def test_secret_rotation_signs_with_every_secret() -> None:
    result, seen, bodies = run(ok, lambda url: command(url, f"{OLD_SECRET} {SECRET}"))
    assert isinstance(result, Sent)
    assert len(seen[0].headers["webhook-signature"].split()) == 2
    for secret in (SECRET, OLD_SECRET):
        Webhook(secret).verify(bodies[0], dict(seen[0].headers))


def status(code: int, **headers: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=code, headers=headers)

    return handler


def test_error_responses_map_to_typed_errors() -> None:
    unavailable, _, _ = run(status(500))
    assert isinstance(unavailable, ProviderUnavailable) and unavailable.retriable
    throttled, _, _ = run(status(429, **{"Retry-After": "7"}))
    assert isinstance(throttled, ProviderThrottled) and throttled.retry_after == 7.0
    gone, _, _ = run(status(410))
    assert isinstance(gone, DeliveryRejected) and gone.permanent and gone.address_dead
    refused, _, _ = run(status(400))
    assert isinstance(refused, DeliveryRejected) and refused.permanent and not refused.address_dead
    for code in (401, 404, 409):
        missing, _, _ = run(status(code))
        assert isinstance(missing, ProviderUnavailable), "a receiver's deploy or secret rotation: retried"


def test_redirects_are_not_followed() -> None:
    result, seen, _ = run(status(302, Location="http://169.254.169.254/latest/meta-data/"))
    assert isinstance(result, ProviderUnavailable) and "redirect" in str(result)
    assert len(seen) == 1


def test_timeouts_and_huge_answers() -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response(status=200)

    timed_out, _, _ = run(slow)
    assert isinstance(timed_out, ProviderUnavailable) and "timed out" in str(timed_out)

    async def huge(request: web.Request) -> web.Response:
        return web.Response(status=200, body=b"x" * 5_000_000)

    result, _, _ = run(huge)
    assert isinstance(result, Sent)

    async def dripping(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        await response.prepare(request)
        for _ in range(40):
            await response.write(b"ok\n")
            await asyncio.sleep(0.1)
        return response

    accepted, _, _ = run(dripping)
    assert isinstance(accepted, Sent), "accepted, then a slow body: a failure sent it again"


def test_a_local_receiver_is_refused_without_the_test_allow_list() -> None:
    result, seen, _ = run(ok, settings=WebhookSettings())
    assert isinstance(result, DeliveryRejected) and "SSRF" in str(result)
    assert seen == []
    for host in ("localhost", "2130706433", "0x7f000001", "[::ffff:127.0.0.1]"):
        hostile, seen, _ = run(
            ok, lambda url, h=host: command(url.replace("127.0.0.1", h)), WebhookSettings()
        )
        assert isinstance(hostile, DeliveryRejected) and seen == [], host


def test_connection_reset_is_retriable() -> None:
    async def scenario() -> Any:
        async def slam(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.transport.abort()

        server = await asyncio.start_server(slam, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with aiohttp.ClientSession() as session:
                return await StandardWebhook(LOCAL).send(session, command(f"http://127.0.0.1:{port}/in"))
        except Exception as exc:
            return exc
        finally:
            server.close()
            await server.wait_closed()

    result = asyncio.run(scenario())
    assert isinstance(result, ProviderUnavailable) and result.retriable


def test_missing_secret_is_refused_before_sending() -> None:
    result, seen, _ = run(ok, lambda url: command(url, ""))
    assert isinstance(result, DeliveryRejected) and result.permanent and seen == []
