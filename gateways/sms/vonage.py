"""Sends one SMS command through the Vonage (Nexmo) SMS API (`POST /sms/json`, form-encoded).

The request carries `api_key` and `api_secret`, the configured sender as `from`, the command's address
without its "+" as `to`, `text`, `type` (`unicode` when the text needs UCS-2, else `text`: Vonage would
otherwise send a non-GSM text as GSM and garble it) and the delivery id as `client-ref`, which Vonage
copies into every delivery receipt of every part. With `status_callback_url` (the edge's
`/callbacks/vonage/status`) each message asks for its receipt there (`callback`, `status-report-req`):
at `/{tenant}/{recipient}/{notification}/{delivery}` when that fits the 100 characters Vonage takes for
`callback`, else at `/{tenant}`, where the edge finds the delivery by its `client-ref` (`vonage_callback`).
Two UUIDs alone are 74 characters: with the full path every message with a receipt was refused.
Texts without a body, addresses that are not E.164 and texts longer than `max_segments` are refused
before any request (`_segments.checked_text`).

Vonage answers HTTP 200 to a refused message too: `{"message-count": "N", "messages": [{"status": ...,
"message-id": ..., "error-text": ...}]}`, one entry per segment of a concatenated text. All "0" is Sent
with the first part's `message-id`; otherwise the first non-zero status decides (a partly accepted text
is retried whole: the recipient may see some parts twice, which beats losing the rest):

* 1 throttled, 10 too many binds: ProviderThrottled after `throttle_retry_seconds` (no Retry-After here).
* 33 number deactivated: permanent with `address_dead` (the runner emits `hard_bounce`); 7 number barred
  (on the account's barred list, where numbers that opted out go): permanent and `refused` (`sms_stop`).
* 3 invalid parameters (the value that varies per message is `to` or `text`), 6 invalid message (e.g.
  an unroutable prefix), 12 message too long, and any status not listed here: permanent.
* 2 missing parameters: ProviderUnavailable. Every request carries every required parameter non-empty
  (the settings require them, the text is checked), so Vonage missing one is a configuration problem.
* 4 invalid credentials, 14 invalid signature, 32 signature and api_secret disallowed, 8 account barred,
  9 out of credit, 11 account not enabled for HTTP, 15 sender not allowed, 29 destination not
  whitelisted (trial accounts), 5 internal error: ProviderUnavailable. The account or platform cannot
  send, not this message: fail over and open the circuit rather than fail every message permanently
  (a permanent refusal would also stop the chain before the next provider could try).

HTTP 429 is ProviderThrottled (`Retry-After`, else `throttle_retry_seconds`); 401/403 name the
credentials and 404 the URL (ProviderUnavailable); 5xx, an unexpected 3xx, a 2xx without message
statuses, timeouts and connection errors are ProviderUnavailable; other 4xx are permanent. A 2xx whose
answer broke off before any status could be read is Sent without a message id (its receipt still finds
the delivery by `client-ref`): as a failure the text was sent again, and the recipient got it twice.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from multidict import CIMultiDictProxy
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateways._http import json_object, post, retry_after
from gateways.base import DeliveryRejected, Provider, ProviderThrottled, ProviderUnavailable, Sent
from gateways.sms._segments import checked_text
from gateways.sms.receipts import receipt_url
from tidings.events import DeliveryCommand

log = logging.getLogger(__name__)
USER_AGENT = "tidings-sms/0.1"
THROTTLED = {"1": "throttled", "10": "too many existing binds"}
DEAD_ADDRESS = {"33": "number de-activated"}
REFUSED = {"7": "number barred"}
UNAVAILABLE = {
    "2": "missing parameters",
    "4": "invalid credentials",
    "5": "internal error",
    "8": "partner account barred",
    "9": "partner quota exceeded",
    "11": "account not enabled for HTTP",
    "14": "invalid signature",
    "15": "invalid sender address",
    "29": "non-whitelisted destination",
    "32": "signature and api_secret disallowed",
}


MAX_CALLBACK = 100
"""Characters Vonage takes in `callback` (SMS API reference, "Max 100 characters")."""


class VonageSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TIDINGS_VONAGE_", frozen=True, hide_input_in_errors=True)

    api_key: str = Field(min_length=1)
    api_secret: SecretStr = Field(min_length=1)
    sender: str = Field(min_length=1)
    base_url: str = "https://rest.nexmo.com"
    status_callback_url: str | None = Field(
        default=None, pattern=r"^https?://[^?#]+$", max_length=MAX_CALLBACK - 9
    )
    """At most 91 characters, so a short tenant's path fits the 100 Vonage takes."""
    max_segments: int = Field(default=10, ge=1)
    throttle_retry_seconds: float = Field(default=1.0, gt=0)
    timeout: float = Field(default=10.0, gt=0)
    max_response_bytes: int = Field(default=64 * 1024, gt=0)


def vonage_callback(base: str, command: DeliveryCommand) -> str | None:
    """Where this message's receipt goes: the full receipt URL when it fits, else the tenant's path, else
    None (the receipt goes where the account's dashboard says)."""
    full = receipt_url(base, command)
    if len(full) <= MAX_CALLBACK:
        return full
    tenant = f"{base.rstrip('/')}/{quote(command.tenant_id, safe='')}"
    return tenant if len(tenant) <= MAX_CALLBACK else None


def form(command: DeliveryCommand, settings: VonageSettings, text: str, unicode: bool) -> dict[str, str]:
    callback = settings.status_callback_url and vonage_callback(settings.status_callback_url, command)
    receipts = {"callback": callback, "status-report-req": "1"} if callback else {}
    return receipts | {
        "api_key": settings.api_key,
        "api_secret": settings.api_secret.get_secret_value(),
        "from": settings.sender,
        "to": command.address.removeprefix("+"),
        "text": text,
        "type": "unicode" if unicode else "text",
        "client-ref": str(command.delivery_id),
    }


def messages_of(body: bytes) -> list[dict[str, Any]]:
    found = json_object(body).get("messages")
    return [m for m in found if isinstance(m, dict)] if isinstance(found, list) else []


class Vonage(Provider):
    channel = "sms"
    name = "vonage"
    settings_class = VonageSettings

    def __init__(self, settings: VonageSettings | None = None) -> None:
        self.settings = settings or VonageSettings()  # type: ignore[call-arg]

    async def send(self, session: aiohttp.ClientSession, command: DeliveryCommand) -> Sent:
        text, parts = checked_text(command, self.settings.max_segments)
        answer = await post(
            session,
            "vonage",
            f"{self.settings.base_url.rstrip('/')}/sms/json",
            body=urlencode(form(command, self.settings, text, parts.encoding == "UCS-2")).encode(),
            limit=self.settings.max_response_bytes,
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
            },
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
        )
        if 200 <= answer.status < 300:
            messages = messages_of(answer.body)
            if not messages and answer.cut:
                log.warning("vonage accepted %s; its answer broke off, so no message id", command.delivery_id)
                return Sent(self.name, None)
            return self._outcome(messages)
        return self._refused(answer.status, answer.headers, answer.body)

    def _outcome(self, messages: list[dict[str, Any]]) -> Sent:
        if not messages:
            raise ProviderUnavailable("vonage answered without message statuses")
        failed = next((m for m in messages if str(m.get("status")) != "0"), None)
        if failed is None:
            message_id = messages[0].get("message-id")
            return Sent(self.name, str(message_id) if message_id else None)
        status = str(failed.get("status"))
        detail = f"(status {status}): {failed.get('error-text') or 'no details'}"
        if status in THROTTLED:
            raise ProviderThrottled(
                f"vonage {THROTTLED[status]} {detail}", self.settings.throttle_retry_seconds
            )
        if status in DEAD_ADDRESS:
            raise DeliveryRejected(f"vonage {DEAD_ADDRESS[status]} {detail}", address_dead=True)
        if status in REFUSED:
            raise DeliveryRejected(f"vonage {REFUSED[status]} {detail}", refused=True)
        if status in UNAVAILABLE:
            raise ProviderUnavailable(f"vonage {UNAVAILABLE[status]} {detail}")
        raise DeliveryRejected(f"vonage rejected the message {detail}")

    def _refused(self, status: int, response_headers: CIMultiDictProxy[str], body: bytes) -> Sent:
        detail = f"({status}): {body[:200].decode(errors='replace') or 'no details'}"
        if status == 429:
            wait = retry_after(response_headers.get("Retry-After"))
            raise ProviderThrottled(
                f"vonage throttled {detail}", self.settings.throttle_retry_seconds if wait is None else wait
            )
        if status in (401, 403):
            raise ProviderUnavailable(f"vonage refused the credentials {detail}")
        if status == 404:
            raise ProviderUnavailable(f"vonage does not know this URL {detail}")
        if status >= 500 or status < 400:
            raise ProviderUnavailable(f"vonage failed {detail}")
        raise DeliveryRejected(f"vonage rejected the message {detail}")
