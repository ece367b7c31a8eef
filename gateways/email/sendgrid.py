"""Sends one email command through the SendGrid v3 Mail Send API (`POST /v3/mail/send`).

The request carries From from `EmailSettings`, the command's address as the only recipient, the text part
before the HTML part (SendGrid requires text/plain first), the `Message-ID` and unsubscribe headers of
`_message.headers`, and `custom_args` (tenant, delivery, notification, recipient) that SendGrid copies into
every Event Webhook event, so `callbacks.sendgrid_events` can tie bounces back to the delivery.

Answers: 2xx is Sent with the `X-Message-Id` header; 429 is ProviderThrottled (`Retry-After`, else the
`X-RateLimit-Reset` epoch); 5xx, timeouts and connection errors are ProviderUnavailable; any other 4xx
is a permanent DeliveryRejected carrying the messages of SendGrid's `errors` array.

401/403 are ProviderUnavailable with a reason that names the credentials: SendGrid answers 401 to a
revoked or wrong key and 403 to a key without the mail.send scope or a From that is not a verified sender.
The provider is misconfigured, not the message wrong, so (as for SMTP authentication failures) the
chain fails over and the provider's circuit opens, pausing consumption when no provider is left, rather
than failing every message permanently while a key is being rotated.
"""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateways._http import post
from gateways._http import retry_after as http_retry_after
from gateways.base import DeliveryRejected, Provider, ProviderThrottled, ProviderUnavailable, Sent
from gateways.email._message import EmailSettings, deliverable, headers, parts
from tidings.events import DeliveryCommand

USER_AGENT = "tidings-email/0.1"


class SendGridSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TIDINGS_SENDGRID_", frozen=True, hide_input_in_errors=True)

    api_key: SecretStr
    base_url: str = "https://api.sendgrid.com"
    timeout: float = Field(default=10.0, gt=0)
    max_response_bytes: int = Field(default=64 * 1024, gt=0)


def custom_args(command: DeliveryCommand) -> dict[str, str]:
    return {
        "tenant_id": command.tenant_id,
        "delivery_id": str(command.delivery_id),
        "notification_id": str(command.notification_id),
        "recipient_id": command.recipient_id,
    }


def fallback_subject(text: str) -> str:
    """A subject for a message whose template has none: SendGrid refuses mail without one ("The subject
    is required"), which failed it for good where SMTP, SES and Postmark send it. The text's first line,
    cut to 78 characters."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return (first[:77] + "…" if len(first) > 78 else first) or "(no subject)"


def payload(command: DeliveryCommand, email: EmailSettings) -> dict[str, Any]:
    subject, text, html = parts(command, email)
    subject = subject or fallback_subject(text)
    content = [{"type": "text/plain", "value": text}] if text else []
    if html:
        content.append({"type": "text/html", "value": html})
    return {
        "personalizations": [{"to": [{"email": deliverable(command.address)}]}],
        "from": {"email": email.from_address, "name": email.from_name},
        "subject": subject,
        "content": content,
        "headers": headers(command, email),
        "custom_args": custom_args(command),
    }


def retry_after(response_headers: CIMultiDictProxy[str]) -> float | None:
    """`Retry-After`, else the wait until `X-RateLimit-Reset` (epoch seconds), both capped alike: a
    reset in milliseconds, or `inf`, held SendGrid's circuit open until a restart."""
    seconds = http_retry_after(response_headers.get("Retry-After"))
    if seconds is not None:
        return seconds
    reset = response_headers.get("X-RateLimit-Reset")
    try:
        return http_retry_after(repr(float(reset) - time.time())) if reset else None
    except ValueError:
        return None


def errors(body: bytes) -> str:
    try:
        found = json.loads(body).get("errors") or []
        messages = [str(e.get("message")) for e in found if isinstance(e, dict) and e.get("message")]
    except (ValueError, AttributeError):
        messages = []
    return "; ".join(messages) or body[:200].decode(errors="replace") or "no details"


class SendGrid(Provider):
    channel = "email"
    name = "sendgrid"
    settings_class = SendGridSettings

    def __init__(
        self, settings: SendGridSettings | None = None, *, email: EmailSettings | None = None
    ) -> None:
        self.settings = settings or SendGridSettings()  # type: ignore[call-arg]
        self.email = email or EmailSettings()

    async def send(self, session: aiohttp.ClientSession, command: DeliveryCommand) -> Sent:
        body = json.dumps(payload(command, self.email), separators=(",", ":")).encode()
        request_headers = {
            "Authorization": f"Bearer {self.settings.api_key.get_secret_value()}",
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }
        url = f"{self.settings.base_url.rstrip('/')}/v3/mail/send"
        answer = await post(
            session,
            "sendgrid",
            url,
            body=body,
            limit=self.settings.max_response_bytes,
            headers=request_headers,
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
        )
        return self._outcome(answer.status, answer.headers, answer.body)

    def _outcome(self, status: int, response_headers: CIMultiDictProxy[str], body: bytes) -> Sent:
        if 200 <= status < 300:
            return Sent(self.name, response_headers.get("X-Message-Id"))
        if status == 429:
            raise ProviderThrottled("sendgrid throttled (429)", retry_after(response_headers))
        if status >= 500:
            raise ProviderUnavailable(f"sendgrid failed ({status})")
        if status < 400:
            raise ProviderUnavailable(f"sendgrid answered {status}, no answer of its API: check the base URL")
        if status in (401, 403):
            raise ProviderUnavailable(f"sendgrid refused the credentials ({status}): {errors(body)}")
        raise DeliveryRejected(f"sendgrid rejected the message ({status}): {errors(body)}")
