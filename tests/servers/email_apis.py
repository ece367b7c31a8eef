"""Local servers speaking the SendGrid v3 Mail Send, Amazon SES v2 SendEmail and Postmark /email protocols.

Each validates a request the way the real API does (credentials, required fields, vendor limits) and
answers with the vendor's own success and error shapes, so the providers are tested against the
protocol rather than against themselves. The SES server checks the SigV4 `Authorization` header by
recomputing the signature from the request as received (method, URL, the headers it names, body) with
its own copy of the credentials. `mode` (see `base.py`) overrides a valid request's answer.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import hmac
import json
import re
import secrets
import uuid
from datetime import UTC, datetime
from email.utils import parseaddr
from typing import Any

from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from pydantic import SecretStr

from gateways.base import Provider
from gateways.email.postmark import Postmark, PostmarkSettings
from gateways.email.sendgrid import SendGrid, SendGridSettings
from gateways.email.ses import Ses, SesSettings
from tests.servers.base import register
from tests.servers.http import VendorServer
from tidings.events import DeliveryCommand, RenderedContent

EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")
SENDGRID_RESERVED = {"x-sg-id", "x-sg-eid", "received", "dkim-signature", "content-type"}
SENDGRID_RESERVED |= {"content-transfer-encoding", "to", "from", "subject", "reply-to", "cc", "bcc"}
SES_TAG = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
SIGV4 = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=([^,]+), ?SignedHeaders=([^,]+), ?Signature=([0-9a-f]{64})$"
)


def email_command(*, priority: str = "normal", address: str = "ada@example.com") -> DeliveryCommand:
    return DeliveryCommand(
        tenant_id="acme",
        delivery_id=uuid.uuid4(),
        notification_id=uuid.uuid4(),
        recipient_id="user-42",
        notification_type="invoice.due",
        category="billing",
        channel="email",
        priority=priority,  # type: ignore[arg-type]
        address=address,
        content=RenderedContent(
            subject="Your invoice is due",
            body="Invoice 17 is due on Friday.",
            html="<p>Invoice <b>17</b> is due on Friday.</p>",
        ),
    )


class HttpApiServer(VendorServer):
    """The email API servers: their default command is an email."""

    def command(self) -> DeliveryCommand:
        return email_command()


@register("email", "sendgrid")
class SendGridServer(HttpApiServer):
    name = "sendgrid"

    def __init__(self) -> None:
        super().__init__()
        self.api_key = "SG." + secrets.token_urlsafe(16)
        self.send_retry_after = True

    def provider(self, *, timeout: float, api_key: str | None = None) -> Provider:
        self.timeout = timeout
        key = SecretStr(api_key or self.api_key)
        return SendGrid(SendGridSettings(api_key=key, base_url=self.base_url, timeout=timeout))

    @staticmethod
    def errors(status: int, *messages: tuple[str | None, str], **headers: str) -> web.Response:
        found = [{"field": field, "message": message, "help": None} for field, message in messages]
        return web.json_response({"errors": found}, status=status, headers=headers)

    async def answer(self, request: web.Request, body: bytes) -> web.StreamResponse:
        if request.method != "POST" or request.path != "/v3/mail/send":
            return self.errors(404, (None, "resource not found"))
        if not hmac.compare_digest(request.headers.get("Authorization", ""), f"Bearer {self.api_key}"):
            return self.errors(
                401, (None, "The provided authorization grant is invalid, expired, or revoked")
            )
        if self.mode == "throttle":
            reset = str(int(datetime.now(UTC).timestamp()) + self.retry_after)
            limits = {"X-RateLimit-Limit": "600", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset}
            if self.send_retry_after:
                limits["Retry-After"] = str(self.retry_after)
            return self.errors(429, (None, "too many requests"), **limits)
        if self.mode == "unavailable":
            return web.Response(status=503, text="Service Unavailable")
        try:
            mail = json.loads(body)
        except ValueError:
            return self.errors(400, (None, "Bad Request"))
        problems = self.validate(mail) if isinstance(mail, dict) else [(None, "Bad Request")]
        if problems:
            return self.errors(400, *problems)
        if self.mode == "reject":
            return self.errors(400, ("from", "The from address does not match a verified Sender Identity."))
        self.accepted.append(mail)
        return web.Response(status=202, headers={"X-Message-Id": secrets.token_urlsafe(16)})

    @staticmethod
    def validate(mail: dict[str, Any]) -> list[tuple[str | None, str]]:
        problems: list[tuple[str | None, str]] = []
        people = mail.get("personalizations")
        if not isinstance(people, list) or not 1 <= len(people) <= 1000:
            problems.append(("personalizations", "The personalizations field is required."))
            people = []
        for i, person in enumerate(people):
            to = person.get("to") if isinstance(person, dict) else None
            if not isinstance(to, list) or not to:
                problems.append((f"personalizations.{i}.to", "The to array is required."))
                continue
            for j, who in enumerate(to):
                if not isinstance(who, dict) or not EMAIL.match(str(who.get("email", ""))):
                    problems.append(
                        (f"personalizations.{i}.to.{j}.email", "Does not contain a valid address.")
                    )
        sender = mail.get("from")
        if not isinstance(sender, dict) or not EMAIL.match(str(sender.get("email", ""))):
            problems.append(("from.email", "The from email does not contain a valid address."))
        if not isinstance(mail.get("subject"), str) or not mail["subject"]:
            problems.append(("subject", "The subject is required."))
        content = mail.get("content")
        if not isinstance(content, list) or not content:
            problems.append(("content", "Unless a valid template_id is provided, the content is required."))
            content = []
        types = [c.get("type") if isinstance(c, dict) else None for c in content]
        for i, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("value"), str) or not part["value"]:
                problems.append((f"content.{i}.value", "The content value must be at least one character."))
        if "text/plain" in types and types.index("text/plain") != 0:
            problems.append(("content", "If present, text/plain must be first."))
        for field in ("headers", "custom_args"):
            extra = mail.get(field, {})
            if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
                problems.append((field, f"The {field} values must be strings."))
            elif field == "headers" and SENDGRID_RESERVED & {k.lower() for k in extra}:
                problems.append(("headers", "This header is reserved and cannot be set."))
        return problems


@register("email", "ses")
class SesServer(HttpApiServer):
    name = "ses"
    region = "eu-west-1"

    def __init__(self) -> None:
        super().__init__()
        self.access_key_id = "AKIA" + secrets.token_hex(8).upper()
        self.secret_access_key = secrets.token_urlsafe(30)
        self.session_token: str | None = None
        self.configuration_sets = {"tidings"}

    def provider(
        self, *, timeout: float, secret_access_key: str | None = None, configuration_set: str | None = None
    ) -> Provider:
        self.timeout = timeout
        settings = SesSettings(
            region=self.region,
            access_key_id=self.access_key_id,
            secret_access_key=SecretStr(secret_access_key or self.secret_access_key),
            session_token=SecretStr(self.session_token) if self.session_token else None,
            endpoint=self.base_url,
            configuration_set=configuration_set,
            timeout=timeout,
        )
        return Ses(settings)

    @staticmethod
    def error(status: int, code: str, message: str, extra: dict[str, str] | None = None) -> web.Response:
        headers = {"x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazonaws.sesv2/"}
        return web.json_response({"message": message}, status=status, headers=headers | (extra or {}))

    def unauthenticated(self, request: web.Request, body: bytes) -> web.Response | None:
        """The 403 SES would answer to this request's credentials or signature, or None if they hold."""
        match = SIGV4.match(request.headers.get("Authorization", ""))
        if not match:
            return self.error(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
        credential, signed, signature = match.groups()
        key_id, _, scope = credential.partition("/")
        stamp = request.headers.get("X-Amz-Date", "")
        if key_id != self.access_key_id:
            return self.error(403, "UnrecognizedClientException", "The security token included is invalid.")
        if scope != f"{stamp[:8]}/{self.region}/ses/aws4_request":
            return self.error(403, "SignatureDoesNotMatch", f"Credential should be scoped correctly: {scope}")
        try:
            skew = abs(datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC) - datetime.now(UTC))
        except ValueError:
            return self.error(403, "IncompleteSignatureException", "X-Amz-Date is not a valid timestamp.")
        if skew.total_seconds() > 300:
            return self.error(403, "InvalidSignatureException", "Signature expired.")
        names = signed.split(";")
        token = request.headers.get("X-Amz-Security-Token")
        if token != self.session_token or (token and "x-amz-security-token" not in names):
            return self.error(403, "UnrecognizedClientException", "The security token included is invalid.")
        if "host" not in names or any(n not in request.headers for n in names):
            return self.error(403, "IncompleteSignatureException", "Signed headers are missing.")
        received = AWSRequest(
            method=request.method,
            url=f"http://{request.host}{request.path_qs}",
            headers={n: request.headers[n] for n in names},
            data=body,
        )
        received.context["timestamp"] = stamp
        auth = SigV4Auth(Credentials(self.access_key_id, self.secret_access_key, token), "ses", self.region)
        expected = auth.signature(auth.string_to_sign(received, auth.canonical_request(received)), received)
        if not hmac.compare_digest(expected, signature):
            mismatch = "The request signature we calculated does not match the signature you provided."
            return self.error(403, "SignatureDoesNotMatch", mismatch)
        return None

    async def answer(self, request: web.Request, body: bytes) -> web.StreamResponse:
        if request.method != "POST" or request.path != "/v2/email/outbound-emails":
            return self.error(404, "UnknownOperationException", "Unknown operation")
        refused = self.unauthenticated(request, body)
        if refused is not None:
            return refused
        if self.mode == "throttle":
            wait = {"Retry-After": str(self.retry_after)}
            return self.error(429, "TooManyRequestsException", "Maximum sending rate exceeded.", wait)
        if self.mode == "unavailable":
            return self.error(503, "ServiceUnavailableException", "Service is unavailable, try again later.")
        try:
            request_json = json.loads(body)
            raw = base64.b64decode(request_json["Content"]["Raw"]["Data"], validate=True)
            to = request_json["Destination"]["ToAddresses"]
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            return self.error(400, "BadRequestException", f"Invalid request: {type(exc).__name__} {exc}")
        message = email.message_from_bytes(raw, policy=email.policy.default)
        problem = self.invalid(request_json, raw, message, to)
        if problem is not None:
            return problem
        if self.mode == "reject":
            return self.error(400, "MessageRejected", "Illegal address")
        if self.mode == "unverified":
            sender = request_json.get("FromEmailAddress") or message["From"]
            why = "Email address is not verified. The following identities failed the check in region "
            why += f"US-EAST-1: {sender}"
            return self.error(400, "MessageRejected", why)
        self.accepted.append({"request": request_json, "message": message})
        return web.json_response({"MessageId": f"0102{secrets.token_hex(6)}-{uuid.uuid4()}-000000"})

    def invalid(
        self, request_json: dict[str, Any], raw: bytes, message: email.message.Message, to: Any
    ) -> web.Response | None:
        if b"\r\n\r\n" not in raw and b"\n\n" not in raw:
            return self.error(400, "MessageRejected", "No blank line between header and body.")
        if any(len(line) > 1000 for line in raw.split(b"\n")):
            return self.error(400, "MessageRejected", "Message lines must not exceed 1000 characters.")
        if not message["From"]:
            return self.error(400, "MessageRejected", "Missing required header 'From'.")
        if not isinstance(to, list) or not to or not all(EMAIL.match(str(a)) for a in to):
            return self.error(400, "BadRequestException", "Destination.ToAddresses: invalid address.")
        for tag in request_json.get("EmailTags", []):
            if not SES_TAG.match(str(tag.get("Name", ""))) or not SES_TAG.match(str(tag.get("Value", ""))):
                return self.error(400, "BadRequestException", f"Invalid tag: {tag}")
        config = request_json.get("ConfigurationSetName")
        if config is not None and config not in self.configuration_sets:
            return self.error(404, "NotFoundException", f"Configuration set <{config}> does not exist.")
        return None


@register("email", "postmark")
class PostmarkServer(HttpApiServer):
    name = "postmark"

    def __init__(self) -> None:
        super().__init__()
        self.server_token = str(uuid.uuid4())
        self.inactive: set[str] = set()
        self.streams = {"outbound"}
        self.senders: set[str] | None = None
        """The account's confirmed sender signatures (None: any sender)."""

    def provider(self, *, timeout: float, server_token: str | None = None) -> Provider:
        self.timeout = timeout
        token = SecretStr(server_token or self.server_token)
        return Postmark(PostmarkSettings(server_token=token, base_url=self.base_url, timeout=timeout))

    @staticmethod
    def error(status: int, code: int, message: str, **headers: str) -> web.Response:
        return web.json_response({"ErrorCode": code, "Message": message}, status=status, headers=headers)

    async def answer(self, request: web.Request, body: bytes) -> web.StreamResponse:
        if request.method != "POST" or request.path != "/email":
            return web.Response(status=404)
        if not hmac.compare_digest(request.headers.get("X-Postmark-Server-Token", ""), self.server_token):
            return self.error(401, 10, "The Server Token you provided in the request header was invalid.")
        if self.mode == "throttle":
            return self.error(429, 429, "Rate limit exceeded.", **{"Retry-After": str(self.retry_after)})
        if self.mode == "unavailable":
            return web.Response(status=503, text="Service Unavailable")
        json_types = (request.headers.get("Accept", ""), request.content_type)
        if not all(t.startswith("application/json") for t in json_types):
            return self.error(422, 409, "JSON required: set the Accept and Content-Type headers.")
        try:
            mail = json.loads(body)
        except ValueError:
            return self.error(422, 402, "Received invalid JSON input.")
        problem = self.invalid(mail) if isinstance(mail, dict) else "The request body must be an object."
        if problem is not None:
            return self.error(422, 300, problem)
        sender = parseaddr(str(mail.get("From")))[1].lower()
        if self.senders is not None and sender not in self.senders:
            why = f"The 'From' address you supplied ({sender}) is not a Sender Signature on your account."
            return self.error(422, 400, why)
        if mail.get("MessageStream", "outbound") not in self.streams:
            return self.error(422, 1235, "The message stream for the provided 'ID' was not found.")
        if mail["To"].lower() in self.inactive:
            return self.error(
                422,
                406,
                "You tried to send to recipient(s) that have been marked as inactive. "
                f"Found inactive addresses: {mail['To']}. Inactive recipients are ones that have generated "
                "a hard bounce, a spam complaint, or a manual suppression.",
            )
        if self.mode == "reject":
            return self.error(422, 300, f"Invalid 'To' address: '{mail['To']}'.")
        self.accepted.append(mail)
        return web.json_response(
            {
                "To": mail["To"],
                "SubmittedAt": datetime.now(UTC).isoformat(),
                "MessageID": str(uuid.uuid4()),
                "ErrorCode": 0,
                "Message": "OK",
            }
        )

    @staticmethod
    def invalid(mail: dict[str, Any]) -> str | None:
        if not EMAIL.match(str(mail.get("From", "")).rpartition("<")[2].rstrip(">")):
            return "Invalid 'From' address."
        if not EMAIL.match(str(mail.get("To", ""))):
            return f"Invalid 'To' address: '{mail.get('To')}'."
        if not mail.get("TextBody") and not mail.get("HtmlBody"):
            return "Provide either email TextBody or HtmlBody or both."
        custom = mail.get("Headers", [])
        if not isinstance(custom, list) or not all(
            isinstance(h, dict) and {"Name", "Value"} <= h.keys() for h in custom
        ):
            return "Headers must be a list of {Name, Value}."
        metadata = mail.get("Metadata", {})
        if not isinstance(metadata, dict) or len(metadata) > 10:
            return "Metadata must be an object of at most 10 fields."
        if any(len(k) > 20 or not isinstance(v, str) or len(v) > 80 for k, v in metadata.items()):
            return "Metadata keys are limited to 20 characters and values to 80 characters."
        return None
