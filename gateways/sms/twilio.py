"""Sends one SMS command through Twilio Programmable Messaging
(`POST /2010-04-01/Accounts/{AccountSid}/Messages.json`, HTTP basic auth with the account SID and token).

The form-encoded request carries the command's E.164 address as `To`, the configured `From` number and/or
`MessagingServiceSid` (Twilio picks the sender from the service's pool), and the text as `Body`. With
`status_callback_url` (the edge's `/callbacks/twilio/status` as Twilio reaches it) each message asks for
its delivery receipt there as `StatusCallback` (`gateways/sms/receipts.py`). Texts
without a body, addresses that are not E.164 and texts longer than `max_segments` are refused before any
request (`_segments.checked_text`).

Answers: 201 is Sent with the message `sid`. Errors are JSON `{code, message, more_info, status}`:

* 21211 (invalid `To`), 21614 (`To` is not a mobile number) and 21635 (`To` is a landline, the code
  Twilio split from 21614 in July 2024): permanent with `address_dead`, so the
  runner emits `hard_bounce` feedback and the number is suppressed until an operator lifts it or it is
  set again; 21610 (the recipient replied STOP): permanent and `refused`, so the feedback is
  `sms_stop`, which only the recipient's START lifts.
* 21212 / 21603 (the `From` number is malformed or missing): ProviderUnavailable. The account is
  misconfigured, not the message wrong; a permanent refusal would end the chain and fail every message
  until someone fixes the console, while failing over lets another provider deliver them.
* 21408 (sending to the destination's region is not enabled), 21606 (the `From` number cannot send to
  this destination: a short code abroad, or not this account's) and 21612 (this `To` and `From` cannot
  be connected): a rejection that is not permanent, so the next provider of the chain is tried and the
  message retried, without counting against the circuit. They are about the destination, and five
  sends to one country opened the circuit for every other message of every tenant; a sender that is
  wrong for every destination still fails over, one request later.
* 21611 (the sender's queue is full): ProviderThrottled after `throttle_retry_seconds`.
* any other 4xx: permanent. 401/403 (20003): ProviderUnavailable naming the credentials, as for the
  email APIs; 404 (an unknown account SID or base URL): ProviderUnavailable, a configuration error too.
* 429 (20429): ProviderThrottled after `Retry-After`, else `throttle_retry_seconds` (Twilio does not
  always send the header). 5xx, an unexpected 3xx, timeouts and connection errors: ProviderUnavailable.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from multidict import CIMultiDictProxy
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateways._http import json_object, post, retry_after
from gateways.base import DeliveryRejected, Provider, ProviderThrottled, ProviderUnavailable, Sent
from gateways.sms._segments import checked_text
from gateways.sms.receipts import receipt_url
from tidings.events import DeliveryCommand

USER_AGENT = "tidings-sms/0.1"
DEAD_ADDRESS = {21211: "invalid 'To' number", 21614: "not a mobile", 21635: "landline, not a mobile"}
REFUSED = {21610: "recipient unsubscribed (STOP)"}
MISCONFIGURED = {21212, 21603}
UNROUTED = {
    21408: "may not send to this number's region",
    21606: "sender cannot reach",
    21612: "cannot route",
}
QUEUE_FULL = 21611


class TwilioSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TIDINGS_TWILIO_", frozen=True, hide_input_in_errors=True)

    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$")
    auth_token: SecretStr
    from_number: str | None = None
    messaging_service_sid: str | None = Field(default=None, pattern=r"^MG[0-9a-fA-F]{32}$")
    base_url: str = "https://api.twilio.com"
    status_callback_url: str | None = Field(default=None, pattern=r"^https?://[^?#]+$")
    max_segments: int = Field(default=10, ge=1)
    throttle_retry_seconds: float = Field(default=1.0, gt=0)
    timeout: float = Field(default=10.0, gt=0)
    max_response_bytes: int = Field(default=64 * 1024, gt=0)

    @model_validator(mode="after")
    def _has_sender(self) -> TwilioSettings:
        if not self.from_number and not self.messaging_service_sid:
            raise ValueError("set from_number or messaging_service_sid (or both)")
        return self


def form(command: DeliveryCommand, settings: TwilioSettings, text: str) -> dict[str, str]:
    fields = {"To": command.address}
    if settings.from_number:
        fields["From"] = settings.from_number
    if settings.messaging_service_sid:
        fields["MessagingServiceSid"] = settings.messaging_service_sid
    fields["Body"] = text
    if settings.status_callback_url:
        fields["StatusCallback"] = receipt_url(settings.status_callback_url, command)
    return fields


class Twilio(Provider):
    channel = "sms"
    name = "twilio"
    settings_class = TwilioSettings

    def __init__(self, settings: TwilioSettings | None = None) -> None:
        self.settings = settings or TwilioSettings()  # type: ignore[call-arg]
        self.authorization = aiohttp.encode_basic_auth(
            self.settings.account_sid, self.settings.auth_token.get_secret_value()
        )
        self.url = (
            f"{self.settings.base_url.rstrip('/')}/2010-04-01/Accounts/"
            f"{quote(self.settings.account_sid)}/Messages.json"
        )

    async def send(self, session: aiohttp.ClientSession, command: DeliveryCommand) -> Sent:
        text, _ = checked_text(command, self.settings.max_segments)
        answer = await post(
            session,
            "twilio",
            self.url,
            body=urlencode(form(command, self.settings, text)).encode(),
            limit=self.settings.max_response_bytes,
            headers={
                "Authorization": self.authorization,
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
            },
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
        )
        return self._outcome(answer.status, answer.headers, json_object(answer.body))

    def _outcome(self, status: int, response_headers: CIMultiDictProxy[str], answer: dict[str, Any]) -> Sent:
        if 200 <= status < 300:
            sid = answer.get("sid")
            return Sent(self.name, str(sid) if sid else None)
        code = answer.get("code")
        detail = f"({status}, code {code}): {answer.get('message') or 'no details'}"
        if status == 429:
            wait = retry_after(response_headers.get("Retry-After"))
            raise ProviderThrottled(
                f"twilio throttled {detail}", self.settings.throttle_retry_seconds if wait is None else wait
            )
        if status >= 500 or status < 400:
            raise ProviderUnavailable(f"twilio failed {detail}")
        if status in (401, 403):
            raise ProviderUnavailable(f"twilio refused the credentials {detail}")
        if status == 404:
            raise ProviderUnavailable(f"twilio does not know this account or URL {detail}")
        if code in DEAD_ADDRESS:
            raise DeliveryRejected(f"twilio {DEAD_ADDRESS[code]} {detail}", address_dead=True)
        if code in REFUSED:
            raise DeliveryRejected(f"twilio {REFUSED[code]} {detail}", refused=True)
        if code in MISCONFIGURED:
            raise ProviderUnavailable(f"twilio sender or account misconfigured {detail}")
        if code in UNROUTED:
            raise DeliveryRejected(f"twilio {UNROUTED[code]} {detail}", permanent=False)
        if code == QUEUE_FULL:
            raise ProviderThrottled(
                f"twilio sender queue full {detail}", self.settings.throttle_retry_seconds
            )
        raise DeliveryRejected(f"twilio rejected the message {detail}")
