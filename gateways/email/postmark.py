"""Sends one email command through the Postmark Email API (`POST /email`, `X-Postmark-Server-Token`).

The request carries From from `EmailSettings`, the command's address as To, TextBody and HtmlBody, the
`Message-ID` and unsubscribe headers of `_message.headers` as `Headers: [{Name, Value}]`, the configured
`MessageStream`, and `Metadata` (delivery, notification, tenant, recipient) that Postmark returns in its
bounce, delivery and subscription webhooks, so `callbacks.postmark` can tie them back. Postmark caps a
metadata value at 80 characters: a longer tenant or recipient id is left out rather than truncated.

Answers: 200 with `ErrorCode` 0 is Sent with `MessageID`. Errors are `{ErrorCode, Message}`, mostly
on 422: 406 (inactive recipient: it hard-bounced, complained or was suppressed) is a permanent rejection
with `address_dead`, so the runner emits feedback that suppresses the address; 405 (the account has
run out of credits) is ProviderUnavailable, like a paused SES account: the account, not this message,
cannot send, so the runner fails over and retries later; every other code (300 invalid request, ...) is
permanent. 401 (bad or missing token) is ProviderUnavailable naming the credentials, as for SendGrid;
429 is ProviderThrottled (`Retry-After`); 5xx, timeouts and connection errors are ProviderUnavailable.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateways._http import json_object, post, retry_after
from gateways.base import DeliveryRejected, Provider, ProviderThrottled, ProviderUnavailable, Sent
from gateways.email._message import EmailSettings, deliverable, headers, parts, sender
from tidings.events import DeliveryCommand

USER_AGENT = "tidings-email/0.1"
INACTIVE_RECIPIENT = 406
NOT_ALLOWED_TO_SEND = 405
ACCOUNT_CODES = {400, 401, NOT_ALLOWED_TO_SEND, 412, 413, 1235}
"""ErrorCodes about the account or its setup, not the message: sender signature not found (400) or not
confirmed (401), not allowed to send (405), account pending (412) or not allowed to send (413), the
configured message stream not found (1235). Every message fails the same way until someone fixes the
account, so the next provider takes them."""
MAX_METADATA_VALUE = 80


class PostmarkSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TIDINGS_POSTMARK_", frozen=True, hide_input_in_errors=True)

    server_token: SecretStr
    base_url: str = "https://api.postmarkapp.com"
    message_stream: str = "outbound"
    timeout: float = Field(default=10.0, gt=0)
    max_response_bytes: int = Field(default=64 * 1024, gt=0)


def metadata(command: DeliveryCommand) -> dict[str, str]:
    values = {
        "delivery_id": str(command.delivery_id),
        "notification_id": str(command.notification_id),
        "tenant_id": command.tenant_id,
        "recipient_id": command.recipient_id,
    }
    return {k: v for k, v in values.items() if len(v) <= MAX_METADATA_VALUE}


def payload(command: DeliveryCommand, settings: PostmarkSettings, email: EmailSettings) -> dict[str, Any]:
    subject, text, html = parts(command, email)
    body: dict[str, Any] = {"From": sender(email), "To": deliverable(command.address), "Subject": subject}
    if text:
        body["TextBody"] = text
    if html:
        body["HtmlBody"] = html
    body["Headers"] = [{"Name": k, "Value": v} for k, v in headers(command, email).items()]
    body["MessageStream"] = settings.message_stream
    body["Metadata"] = metadata(command)
    return body


class Postmark(Provider):
    channel = "email"
    name = "postmark"
    settings_class = PostmarkSettings

    def __init__(
        self, settings: PostmarkSettings | None = None, *, email: EmailSettings | None = None
    ) -> None:
        self.settings = settings or PostmarkSettings()  # type: ignore[call-arg]
        self.email = email or EmailSettings()

    async def send(self, session: aiohttp.ClientSession, command: DeliveryCommand) -> Sent:
        body = json.dumps(payload(command, self.settings, self.email), separators=(",", ":")).encode()
        request_headers = {
            "X-Postmark-Server-Token": self.settings.server_token.get_secret_value(),
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }
        answer = await post(
            session,
            "postmark",
            f"{self.settings.base_url.rstrip('/')}/email",
            body=body,
            limit=self.settings.max_response_bytes,
            headers=request_headers,
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
        )
        return self._outcome(answer.status, answer.headers, json_object(answer.body))

    def _outcome(self, status: int, response_headers: CIMultiDictProxy[str], answer: dict[str, Any]) -> Sent:
        code = answer.get("ErrorCode")
        message = str(answer.get("Message") or "no details")
        if status == 200 and code == 0:
            message_id = answer.get("MessageID")
            return Sent(self.name, str(message_id) if message_id else None)
        if status == 429:
            raise ProviderThrottled(
                "postmark throttled (429)", retry_after(response_headers.get("Retry-After"))
            )
        if status >= 500:
            raise ProviderUnavailable(f"postmark failed ({status})")
        if status < 400:
            raise ProviderUnavailable(f"postmark answered {status}, no answer of its API: check the base URL")
        if status == 401:
            raise ProviderUnavailable(f"postmark refused the credentials (401, ErrorCode {code}): {message}")
        if code == INACTIVE_RECIPIENT:
            raise DeliveryRejected(f"postmark inactive recipient (406): {message}", address_dead=True)
        if code in ACCOUNT_CODES:
            raise ProviderUnavailable(f"postmark account or sender cannot send (ErrorCode {code}): {message}")
        raise DeliveryRejected(f"postmark rejected the message ({status}, ErrorCode {code}): {message}")
