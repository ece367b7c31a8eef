"""Delivers one command to a webhook endpoint per Standard Webhooks (standardwebhooks.com).

`webhook-id` is the delivery id (stable across retries, so receivers dedupe), `webhook-timestamp` the
send time, `webhook-signature` one `v1,<base64 HMAC-SHA256>` per secret (several during rotation:
`address_params["secret"]` may hold space-separated `whsec_` secrets). The target passes the SSRF guard
and is connected to by its checked IP with the original Host header and TLS server name; redirects are
refused, and at most `max_response_bytes` of the answer is read. Answers: 2xx Sent; 410 gone (the
address is dead); 429 throttled; 400/413/414/422 (`PAYLOAD_REFUSED`) permanent; any other (3xx, 401,
403, 404, 5xx, ...) ProviderUnavailable, retried through the tiers.
"""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime
from functools import cached_property, lru_cache

import aiohttp
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from standardwebhooks import Webhook

from gateways._http import post, retry_after
from gateways.base import DeliveryRejected, Provider, ProviderThrottled, ProviderUnavailable, Sent
from gateways.webhook.ssrf import check
from tidings.events import DeliveryCommand

USER_AGENT = "tidings-webhooks/0.1"
PAYLOAD_REFUSED = frozenset({400, 413, 414, 422})
"""Answers about the request itself, which the same bytes would get again: permanent. Every other
non-2xx but 410 and 429 is retried through the tiers and counts towards disabling the endpoint, as
Standard Webhooks asks: a 404 or 401 during a receiver's deploy or secret rotation, permanent, lost the
events with nothing to replay, and an endpoint answering 404 for good was never disabled."""


class WebhookSettings(BaseSettings):
    """`TIDINGS_WEBHOOK_ALLOW_CIDRS=127.0.0.1/32` lets tests reach a local receiver; never in production."""

    model_config = SettingsConfigDict(env_prefix="TIDINGS_WEBHOOK_", frozen=True, hide_input_in_errors=True)

    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=10.0, gt=0)
    max_response_bytes: int = Field(default=64 * 1024, gt=0)
    allow_cidrs: str = ""

    @cached_property
    def allowed(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(c.strip()) for c in self.allow_cidrs.split(",") if c.strip())


def payload(command: DeliveryCommand) -> str:
    if command.content.data_json:
        return command.content.data_json
    return json.dumps(
        {
            "type": command.notification_type,
            "notification_id": str(command.notification_id),
            "title": command.content.title,
            "body": command.content.body,
        },
        separators=(",", ":"),
    )


@lru_cache(maxsize=4096)
def signer(secret: str) -> Webhook:
    return Webhook(secret)


def signatures(secrets: str, msg_id: str, at: datetime, body: str) -> str:
    return " ".join(signer(secret).sign(msg_id, at, body) for secret in secrets.split())


class StandardWebhook(Provider):
    per_endpoint = True
    channel = "webhook"
    name = "standard"
    settings_class = WebhookSettings

    def __init__(self, settings: WebhookSettings | None = None) -> None:
        self.settings = s = settings or WebhookSettings()
        self.timeout = aiohttp.ClientTimeout(
            sock_connect=s.connect_timeout, sock_read=s.read_timeout, total=s.connect_timeout + s.read_timeout
        )

    async def send(self, session: aiohttp.ClientSession, command: DeliveryCommand) -> Sent:
        secrets = command.address_params.get("secret", "")
        if not secrets:
            raise DeliveryRejected("webhook endpoint has no signing secret")
        target = await check(command.address, self.settings.allowed, self.settings.connect_timeout)
        body = payload(command)
        msg_id = str(command.delivery_id)
        now = datetime.now(UTC)
        host = target.host if ":" not in target.host else f"[{target.host}]"
        ip = target.ip if ":" not in target.ip else f"[{target.ip}]"
        default_port = target.port == (443 if target.scheme == "https" else 80)
        headers = {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signatures(secrets, msg_id, now, body),
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "host": host if default_port else f"{host}:{target.port}",
        }
        url = f"{target.scheme}://{ip}:{target.port}{target.path}"
        tls_name = target.host if target.scheme == "https" else None
        answer = await post(
            session,
            "webhook",
            url,
            body=body.encode(),
            limit=self.settings.max_response_bytes,
            headers=headers,
            timeout=self.timeout,
            server_hostname=tls_name,
        )
        return self._outcome(answer.status, answer.headers.get("retry-after"), msg_id)

    def _outcome(self, status: int, retry_header: str | None, msg_id: str) -> Sent:
        if 200 <= status < 300:
            return Sent(self.name, msg_id)
        if status == 410:
            raise DeliveryRejected("endpoint gone (410)", address_dead=True)
        if status == 429:
            raise ProviderThrottled("endpoint throttled (429)", retry_after(retry_header))
        if status in PAYLOAD_REFUSED:
            raise DeliveryRejected(f"endpoint refused the payload ({status})")
        if 300 <= status < 400:
            raise ProviderUnavailable(f"endpoint redirected ({status}): redirects are not followed")
        wait = retry_after(retry_header) if status == 503 else None
        raise ProviderUnavailable(f"endpoint {'failed' if status >= 500 else 'refused'} ({status})", wait)
