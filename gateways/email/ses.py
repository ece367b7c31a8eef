"""Sends one email command through Amazon SES API v2 `SendEmail` (`POST /v2/email/outbound-emails`).

The message goes as `Content.Raw`: the base64 of the exact MIME that `_message.build` produces, so the
text and HTML parts and the RFC 8058 unsubscribe headers are ours byte for byte. SES documents that it
replaces a `Message-ID` it is given with its own (and keeps the original in bounce/complaint notifications
that include headers), so the delivery is tied back through `EmailTags` instead: `delivery_id` and
`notification_id`, plus `tenant_id` and `recipient_id`. Tag values may only hold ASCII letters, digits,
`_` and `-`; an id with other characters goes base64url-encoded under `<name>_b64`, in 256-character
pieces under `<name>_b64_<i>` when longer, and `callbacks.ses_sns` decodes it. The request is signed with
SigV4 (service `ses`) by botocore.

Answers (rest-json: the error code is the `x-amzn-ErrorType` header, the text the body's `message`): 2xx
is Sent with `MessageId`; `TooManyRequestsException` (429) and `LimitExceededException` are
ProviderThrottled; `AccountSuspendedException`, `SendingPausedException`,
`MailFromDomainNotVerifiedException` and `MessageRejected` "Email address is not verified" (the sender's
identity, lapsed or of another region) are ProviderUnavailable: the account, not this message, cannot
send, so the runner should fail over to the next provider and retry later instead of failing every command
permanently; 5xx, timeouts and connection errors are ProviderUnavailable; 401/403 (bad signature, unknown
or expired key, denied) are ProviderUnavailable naming the credentials, as for SendGrid; every other 4xx
(`MessageRejected`, `BadRequestException`, ...) is a permanent DeliveryRejected.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import aiohttp
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from multidict import CIMultiDictProxy
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateways._http import json_object, post, retry_after
from gateways.base import DeliveryRejected, Provider, ProviderThrottled, ProviderUnavailable, Sent
from gateways.email._message import EmailSettings, build, deliverable, sender
from tidings.events import DeliveryCommand

TAG_VALUE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
THROTTLED = frozenset({"TooManyRequestsException", "LimitExceededException", "ThrottlingException"})
ACCOUNT_CANNOT_SEND = frozenset(
    {
        "AccountSuspendedException",
        "SendingPausedException",
        "MailFromDomainNotVerifiedException",
        "NotFoundException",
    }
)
"""The account or its setup, not the message: suspended or paused sending, a MAIL FROM domain not
verified, a configuration set that does not exist (NotFoundException). Every message fails alike, so
the next provider takes them instead of each being FAILED for good."""
UNVERIFIED = "not verified"
"""In a `MessageRejected`: "Email address is not verified. The following identities failed the check in
region ...", the sender's identity (lapsed, or verified in another region): every message fails alike."""


class SesSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TIDINGS_SES_", frozen=True, hide_input_in_errors=True)

    region: str
    access_key_id: str
    secret_access_key: SecretStr
    session_token: SecretStr | None = None
    endpoint: str | None = Field(default=None, description="Default: https://email.<region>.amazonaws.com")
    configuration_set: str | None = None
    timeout: float = Field(default=10.0, gt=0)
    max_response_bytes: int = Field(default=64 * 1024, gt=0)

    def url(self) -> str:
        base = self.endpoint or f"https://email.{self.region}.amazonaws.com"
        return f"{base.rstrip('/')}/v2/email/outbound-emails"

    def credentials(self) -> Any:
        token = self.session_token.get_secret_value() if self.session_token else None
        return Credentials(self.access_key_id, self.secret_access_key.get_secret_value(), token)


def email_tags(command: DeliveryCommand) -> list[dict[str, str]]:
    """The ids as tags: as they are, base64url under `<name>_b64`, or, longer than the 256 characters a
    tag value may hold, in pieces under `<name>_b64_<i>`. Dropped when too long, a tenant id over about
    190 bytes left its bounces to the tenant of the callback URL, and the tenant went on mailing the
    address."""
    tags = [
        {"Name": "delivery_id", "Value": str(command.delivery_id)},
        {"Name": "notification_id", "Value": str(command.notification_id)},
    ]
    for name, value in (("tenant_id", command.tenant_id), ("recipient_id", command.recipient_id)):
        if TAG_VALUE.match(value):
            tags.append({"Name": name, "Value": value})
            continue
        encoded = base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")
        if len(encoded) <= 256:
            tags.append({"Name": f"{name}_b64", "Value": encoded})
            continue
        pieces = [encoded[i : i + 256] for i in range(0, len(encoded), 256)]
        tags += [{"Name": f"{name}_b64_{i}", "Value": piece} for i, piece in enumerate(pieces)]
    return tags


def payload(command: DeliveryCommand, settings: SesSettings, email: EmailSettings) -> dict[str, Any]:
    message = build(command, email)
    body: dict[str, Any] = {
        "FromEmailAddress": sender(email),
        "Destination": {"ToAddresses": [deliverable(command.address)]},
        "Content": {"Raw": {"Data": base64.b64encode(message.as_bytes()).decode()}},
        "EmailTags": email_tags(command),
    }
    if settings.configuration_set:
        body["ConfigurationSetName"] = settings.configuration_set
    return body


def signed_headers(settings: SesSettings, body: bytes) -> dict[str, str]:
    request = AWSRequest(
        method="POST", url=settings.url(), data=body, headers={"Content-Type": "application/json"}
    )
    SigV4Auth(settings.credentials(), "ses", settings.region).add_auth(request)
    return {str(k): str(v) for k, v in request.headers.items()}


def error_of(response_headers: CIMultiDictProxy[str], body: bytes) -> tuple[str, str]:
    """The SES error code and message of an error answer."""
    data = json_object(body)
    raw = response_headers.get("x-amzn-ErrorType") or str(data.get("__type") or data.get("code") or "")
    message = str(data.get("message") or data.get("Message") or body[:200].decode(errors="replace"))
    return raw.split(":")[0].split("#")[-1], message


class Ses(Provider):
    channel = "email"
    name = "ses"
    settings_class = SesSettings

    def __init__(self, settings: SesSettings | None = None, *, email: EmailSettings | None = None) -> None:
        self.settings = settings or SesSettings()  # type: ignore[call-arg]
        self.email = email or EmailSettings()

    async def send(self, session: aiohttp.ClientSession, command: DeliveryCommand) -> Sent:
        body = json.dumps(payload(command, self.settings, self.email), separators=(",", ":")).encode()
        answer = await post(
            session,
            "ses",
            self.settings.url(),
            body=body,
            limit=self.settings.max_response_bytes,
            headers=signed_headers(self.settings, body),
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
        )
        return self._outcome(answer.status, answer.headers, answer.body)

    def _outcome(self, status: int, response_headers: CIMultiDictProxy[str], body: bytes) -> Sent:
        if 200 <= status < 300:
            try:
                message_id = json.loads(body).get("MessageId")
            except (ValueError, AttributeError):
                message_id = None
            return Sent(self.name, str(message_id) if message_id else None)
        code, message = error_of(response_headers, body)
        if status == 429 or code in THROTTLED:
            raise ProviderThrottled(
                f"ses throttled: {code or status}", retry_after(response_headers.get("Retry-After"))
            )
        if code in ACCOUNT_CANNOT_SEND or (code == "MessageRejected" and UNVERIFIED in message):
            raise ProviderUnavailable(f"ses account cannot send: {code}: {message}")
        if status >= 500:
            raise ProviderUnavailable(f"ses failed ({status}): {code}")
        if status < 400:
            raise ProviderUnavailable(f"ses answered {status}, no answer of its API: check the endpoint")
        if status in (401, 403):
            raise ProviderUnavailable(f"ses refused the credentials ({status} {code}): {message}")
        raise DeliveryRejected(f"ses rejected the message ({status} {code}): {message}")
