"""Local servers speaking Twilio Programmable Messaging (`/2010-04-01/Accounts/{sid}/Messages.json`) and the
Vonage SMS API (`/sms/json`).

Each validates a request the way the real API does (credentials, required parameters, E.164 `To` for
Twilio, digits-only `to` for Vonage, the owned `From` numbers, body limits) and answers with the vendor's
own success and error shapes: Twilio's message resource or `{code, message, more_info, status}` error;
Vonage's HTTP 200 `{"message-count", "messages": [...]}` with a per-part status even for refusals. `mode`
(see `base.py`) overrides a valid request's answer, in the vendor's shape: Vonage throttles with status
"1" in a 200 (no Retry-After exists there, so its `provider()` sets `throttle_retry_seconds` to
`retry_after`) and reports `unavailable` as status "5" (internal error). Tests reach the other answers
through `unsubscribed`/`landlines`/`barred` numbers, a forced Twilio error (`force_error`) or Vonage
status (`force_status`, `http_status`). `ids` lists the message ids each accepted request was answered with.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import math
import re
import secrets
import uuid
from collections.abc import Coroutine
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from pydantic import SecretStr

from gateways.base import Provider
from gateways.sms.twilio import Twilio, TwilioSettings
from gateways.sms.vonage import Vonage, VonageSettings
from tests.servers.base import register
from tests.servers.http import VendorServer
from tests.servers.sms_receipts import twilio_receipts, vonage_receipts
from tidings.events import DeliveryCommand, RenderedContent

URL = re.compile(r"^https?://[^\s/?#]+[^\s]*$")
E164 = re.compile(r"^\+[1-9]\d{6,14}$")
MSISDN = re.compile(r"^[1-9]\d{6,14}$")
TWILIO_PATH = re.compile(r"^/2010-04-01/Accounts/([^/]+)/Messages\.json$")
GSM_EXTENSION = set("\f^{}\\[~]|€")


def sms_command(*, address: str = "+447700900123", body: str = "Your code is 123456.") -> DeliveryCommand:
    return DeliveryCommand(
        tenant_id="acme",
        delivery_id=uuid.uuid4(),
        notification_id=uuid.uuid4(),
        recipient_id="user-42",
        notification_type="auth.code",
        category="security",
        channel="sms",
        priority="high",
        address=address,
        content=RenderedContent(body=body),
    )


def form_of(request: web.Request, body: bytes) -> dict[str, str]:
    if request.content_type != "application/x-www-form-urlencoded":
        return {}
    return dict(parse_qsl(body.decode(errors="replace"), keep_blank_values=True))


class SmsApiServer(VendorServer):
    """The SMS API servers: their default command is an SMS; `ids` holds the ids they answered."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[list[str]] = []
        self.undeliverable: dict[str, str] = {}
        self.receipts: list[int] = []
        self._reporting: set[asyncio.Task[None]] = set()

    def report(self, receipts: Coroutine[Any, Any, list[int]]) -> None:
        """Send a message's receipts after answering, as the vendors do; `receipts` collects the
        statuses the receipt URL answered."""

        async def run() -> None:
            self.receipts += await receipts

        task = asyncio.create_task(run())
        self._reporting.add(task)
        task.add_done_callback(self._reporting.discard)

    async def reported(self, count: int, timeout: float = 10.0) -> list[int]:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.receipts) < count and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        return self.receipts

    def command(self) -> DeliveryCommand:
        return sms_command()

    def provider(self, *, timeout: float, **settings: Any) -> Provider:
        raise NotImplementedError


@register("sms", "twilio")
class TwilioServer(SmsApiServer):
    name = "twilio"

    def __init__(self) -> None:
        super().__init__()
        self.account_sid = "AC" + secrets.token_hex(16)
        self.auth_token = secrets.token_hex(16)
        self.numbers = {"+15005550006"}
        self.unsubscribed: set[str] = set()
        self.landlines: set[str] = set()
        self.force_error: tuple[int, int, str] | None = None
        self.send_retry_after = True

    def provider(self, *, timeout: float, **settings: Any) -> Provider:
        self.timeout = timeout
        fields: dict[str, Any] = {
            "account_sid": self.account_sid,
            "auth_token": SecretStr(self.auth_token),
            "from_number": "+15005550006",
            "base_url": self.base_url,
            "timeout": timeout,
        }
        return Twilio(TwilioSettings(**(fields | settings)))

    @staticmethod
    def error(status: int, code: int, message: str, **headers: str) -> web.Response:
        body = {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        }
        return web.json_response(body, status=status, headers=headers)

    def authenticated(self, request: web.Request) -> bool:
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        expected = f"{self.account_sid}:{self.auth_token}"
        return scheme.lower() == "basic" and hmac.compare_digest(decoded.encode(), expected.encode())

    async def answer(self, request: web.Request, body: bytes) -> web.StreamResponse:
        path = TWILIO_PATH.match(request.path)
        if request.method != "POST" or path is None:
            return self.error(404, 20404, f"The requested resource {request.path} was not found")
        if not self.authenticated(request):
            return self.error(401, 20003, "Authenticate")
        if path.group(1) != self.account_sid:
            return self.error(404, 20404, f"The requested resource {request.path} was not found")
        if self.mode == "throttle":
            wait = {"Retry-After": str(self.retry_after)} if self.send_retry_after else {}
            return self.error(429, 20429, "Too Many Requests", **wait)
        if self.mode == "unavailable":
            return self.error(503, 20503, "Service unavailable")
        form = form_of(request, body)
        problem = self.invalid(form)
        if problem is not None:
            return problem
        to = form["To"]
        if to in self.unsubscribed:
            return self.error(400, 21610, "Attempt to send to unsubscribed recipient")
        if to in self.landlines:
            return self.error(400, 21614, f"'To' number {to} is not a valid mobile number")
        if self.force_error is not None:
            return self.error(*self.force_error)
        if self.mode == "reject":
            return self.error(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
        self.accepted.append(form)
        resource = self.resource(form)
        if url := form.get("StatusCallback"):
            error = self.undeliverable.get(to)
            self.report(twilio_receipts(url, form, resource["sid"], self.account_sid, self.auth_token, error))
        return web.json_response(resource, status=201)

    def invalid(self, form: dict[str, str]) -> web.Response | None:
        to, sender, service = form.get("To"), form.get("From"), form.get("MessagingServiceSid")
        if not to:
            return self.error(400, 21604, "A 'To' phone number is required.")
        if not E164.match(to):
            return self.error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if not sender and not service:
            return self.error(400, 21603, "A 'From' phone number is required.")
        if sender and sender not in self.numbers:
            return self.error(
                400,
                21606,
                f"The From phone number {sender} is not a valid, SMS-capable inbound phone number "
                "or short code for your account.",
            )
        if not form.get("Body"):
            return self.error(400, 21602, "Message body is required.")
        if (callback := form.get("StatusCallback")) is not None and not URL.match(callback):
            return self.error(400, 21609, f"Invalid StatusCallback URL: {callback}")
        if len(form["Body"]) > 1600:
            return self.error(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
        return None

    def resource(self, form: dict[str, str]) -> dict[str, Any]:
        sid = "SM" + secrets.token_hex(16)
        self.ids.append([sid])
        now = format_datetime(datetime.now(UTC), usegmt=True)
        return {
            "sid": sid,
            "account_sid": self.account_sid,
            "messaging_service_sid": form.get("MessagingServiceSid"),
            "to": form["To"],
            "from": form.get("From"),
            "body": form["Body"],
            "status": "queued" if form.get("From") else "accepted",
            "direction": "outbound-api",
            "api_version": "2010-04-01",
            "date_created": now,
            "date_updated": now,
            "error_code": None,
            "error_message": None,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
        }


@register("sms", "vonage")
class VonageServer(SmsApiServer):
    name = "vonage"

    def __init__(self) -> None:
        super().__init__()
        self.api_key = secrets.token_hex(4)
        self.api_secret = secrets.token_urlsafe(12)
        self.barred: set[str] = set()
        self.force_status: tuple[str, str] | None = None
        self.http_status: int | None = None
        self.signature_secret = secrets.token_urlsafe(16)
        self.dlr_method = "POST"
        self.cut_answer = False
        """Accept the message, then send half of the answer and drop the connection."""

    def provider(self, *, timeout: float, **settings: Any) -> Provider:
        self.timeout = timeout
        fields: dict[str, Any] = {
            "api_key": self.api_key,
            "api_secret": SecretStr(self.api_secret),
            "sender": "Tidings",
            "base_url": self.base_url,
            "throttle_retry_seconds": self.retry_after,
            "timeout": timeout,
        }
        return Vonage(VonageSettings(**(fields | settings)))

    @staticmethod
    def refusal(status: str, text: str, to: str | None = None) -> web.Response:
        message = (
            {"to": to, "status": status, "error-text": text} if to else {"status": status, "error-text": text}
        )
        return web.json_response({"message-count": "1", "messages": [message]})

    @staticmethod
    def parameters(request: web.Request, body: bytes) -> dict[str, str]:
        """Vonage reads a form body or a JSON object; anything else carries no parameters."""
        if request.content_type != "application/json":
            return form_of(request, body)
        try:
            data = json.loads(body)
        except ValueError:
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    @staticmethod
    def parts(text: str, kind: str) -> int:
        """Vonage's own split: 160/153 septets (extension characters count two) or 70/67 UTF-16 units."""
        if kind == "unicode":
            units, single, each = len(text.encode("utf-16-le")) // 2, 70, 67
        else:
            units, single, each = sum(2 if c in GSM_EXTENSION else 1 for c in text), 160, 153
        return 1 if units <= single else math.ceil(units / each)

    async def answer(self, request: web.Request, body: bytes) -> web.StreamResponse:
        if request.method != "POST" or request.path != "/sms/json":
            return web.Response(status=404, text="Not Found")
        if self.http_status is not None:
            wait = {"Retry-After": str(self.retry_after)} if self.http_status == 429 else {}
            return web.Response(status=self.http_status, text="Error", headers=wait)
        params = self.parameters(request, body)
        for name in ("api_key", "api_secret"):
            if not params.get(name):
                return self.refusal("2", f"Missing {name}")
        key_ok = hmac.compare_digest(params["api_key"], self.api_key)
        if not (hmac.compare_digest(params["api_secret"], self.api_secret) and key_ok):
            return self.refusal("4", "Bad Credentials")
        problem = self.invalid(params)
        if problem is not None:
            return problem
        to = params["to"]
        if self.mode == "throttle":
            return self.refusal("1", "Throughput Rate Exceeded - please wait [ 1 ] and retry", to)
        if self.mode == "unavailable":
            return self.refusal("5", "Internal Error", to)
        if to in self.barred:
            return self.refusal("7", "Number barred", to)
        if self.force_status is not None:
            return self.refusal(*self.force_status, to)
        if self.mode == "reject":
            return self.refusal("6", "Unroutable message - rejected", to)
        self.accepted.append(params)
        count = self.parts(params["text"], params.get("type", "text"))
        messages = [
            {
                "to": to,
                "message-id": secrets.token_hex(8).upper(),
                "status": "0",
                "remaining-balance": "15.53590000",
                "message-price": "0.03330000",
                "network": "23410",
                **({"client-ref": params["client-ref"]} if "client-ref" in params else {}),
            }
            for _ in range(count)
        ]
        self.ids.append([m["message-id"] for m in messages])
        if "callback" in params and params.get("status-report-req") == "1":
            error = self.undeliverable.get("+" + to)
            ids = self.ids[-1]
            self.report(
                vonage_receipts(params, ids, self.api_key, self.signature_secret, self.dlr_method, error)
            )
        answer = json.dumps({"message-count": str(count), "messages": messages}).encode()
        if self.cut_answer:
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.content_length = len(answer)
            await response.prepare(request)
            await response.write(answer[: len(answer) // 2])
            assert request.transport is not None
            request.transport.abort()
            return response
        return web.Response(body=answer, content_type="application/json")

    def invalid(self, params: dict[str, str]) -> web.Response | None:
        for name in ("from", "to", "text"):
            if not params.get(name):
                return self.refusal("2", f"Missing {name} param")
        if not MSISDN.match(params["to"]):
            return self.refusal("3", "Invalid to address")
        if params.get("type", "text") not in ("text", "unicode"):
            return self.refusal("3", "Invalid Message Type")
        if len(params.get("client-ref", "")) > 100:
            return self.refusal("3", "Invalid client-ref: maximum length is 100")
        if "callback" in params and not URL.match(params["callback"]):
            return self.refusal("3", "Invalid callback URL")
        if len(params.get("callback", "")) > 100:
            return self.refusal("3", "Invalid callback: maximum length is 100")
        return None
