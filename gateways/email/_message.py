"""Builds the email every email provider sends for a DeliveryCommand, so SMTP and the HTTP APIs agree.

* `multipart/alternative` with the text body first and the HTML body last (RFC 2046: the richest last);
  a command without HTML is a single text/plain part.
* `Message-ID: <delivery_id@domain>`: stable across retries and failover, so a receiving MTA or a
  support engineer can tie a message to its delivery, and a re-send after a crash is recognisably the
  same message.
* RFC 8058 one-click unsubscribe (`List-Unsubscribe: <https://...>` and
  `List-Unsubscribe-Post: List-Unsubscribe=One-Click`) on every non-critical message. The URL carries a
  signed token (JWT, HS256) naming tenant, recipient, category and address; the HTTP edge verifies it
  with `unsubscribe_claims` and produces an `unsubscribe` ProviderFeedback. Critical messages (password
  resets, security alerts) carry no unsubscribe header: recipients cannot opt out of them.
* Open and click tracking when configured (`gateways/email/tracking.py`), never for critical messages.
"""

from __future__ import annotations

import email.errors
import email.policy
import ipaddress
import json
import logging
import re
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import idna
import jwt
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateways.base import DeliveryRejected
from gateways.email.tracking import tracked
from tidings.config import own_secret
from tidings.events import DeliveryCommand

log = logging.getLogger(__name__)
ONE_CLICK = "List-Unsubscribe=One-Click"
MAX_LINE = 998
"""Octets a header line may hold (RFC 5322 2.1.1; SES refuses longer lines). The unsubscribe link is
one unfolded line: ids long enough to pass it (a 256-character tenant and recipient) leave the message
without the header rather than refused for good, and the warning names the delivery."""
POLICY = email.policy.SMTP.clone(refold_source="none")
"""What the message is written with: headers folded at 78, so a non-ASCII subject or sender name is
encoded words of at most 75 characters (RFC 2047); `List-Unsubscribe` is set raw (`build`) and written
as it is, one line (RFC 5322 allows 998 octets), since folded at 78 the long URL became encoded words,
which mail clients do not read as a List-Unsubscribe URL. The bodies are encoded before it applies
(`BODY_POLICY`)."""
BODY_POLICY = email.policy.SMTP.clone(max_line_length=76)
"""What the bodies are encoded with: quoted-printable and base64 lines of at most 76 (RFC 2045)."""
TOKEN_AUDIENCE = "tidings:unsubscribe"
DEV_SECRET = "dev-only-unsubscribe-secret-change-me"


class EmailSettings(BaseSettings):
    """Sender identity and unsubscribe links shared by every email provider (`TIDINGS_EMAIL_*`)."""

    model_config = SettingsConfigDict(env_prefix="TIDINGS_EMAIL_", frozen=True, hide_input_in_errors=True)

    from_address: str = "notifications@tidings.localhost"
    from_name: str = "tidings"
    message_id_domain: str = "tidings.localhost"
    unsubscribe_url: str = Field(
        default="http://127.0.0.1:8080/unsubscribe", description="Base URL; the token is appended."
    )
    unsubscribe_secret: SecretStr = SecretStr(DEV_SECRET)
    track_opens: bool = False
    track_clicks: bool = False
    tracking_url: str = Field(
        default="http://127.0.0.1:8080/t", description="The edge's tracking routes, as recipients reach them."
    )

    @field_validator("from_address")
    @classmethod
    def _ascii_domain(cls, value: str) -> str:
        """The sender's domain in IDNA (`bücher.de` as `xn--bcher-kva.de`), as recipients' are: in
        Unicode it failed every send (formataddr raised, and each command was dead-lettered), and SES
        takes 7-bit addresses only."""
        try:
            return deliverable(value)
        except DeliveryRejected as exc:
            raise ValueError(str(exc)) from None

    @property
    def tracking(self) -> bool:
        return self.track_opens or self.track_clicks

    @property
    def dev_secret(self) -> bool:
        return self.unsubscribe_secret.get_secret_value() == DEV_SECRET

    @model_validator(mode="after")
    def _links_need_a_secret(self) -> EmailSettings:
        """Click links redirect to the URL in their token, and an unsubscribe token opts its address out:
        signed with the public default secret, anyone could mint them. The default does for links to
        this machine only (development)."""
        if not self.dev_secret:
            own_secret(self.unsubscribe_secret.get_secret_value(), "TIDINGS_EMAIL_UNSUBSCRIBE_SECRET")
        if self.tracking and self.dev_secret:
            raise ValueError("tracking needs TIDINGS_EMAIL_UNSUBSCRIBE_SECRET set to a secret of your own")
        if self.dev_secret and not loopback(urlsplit(self.unsubscribe_url).hostname):
            raise ValueError(
                f"unsubscribe links to {self.unsubscribe_url} need TIDINGS_EMAIL_UNSUBSCRIBE_SECRET "
                "set to a secret of your own"
            )
        return self


def loopback(host: str | None) -> bool:
    """Whether a host name or address is this machine (localhost, 127.0.0.0/8, ::1)."""
    if host is None:
        return False
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def message_id(command: DeliveryCommand, settings: EmailSettings) -> str:
    return f"<{command.delivery_id}@{settings.message_id_domain}>"


def unsubscribe_token(command: DeliveryCommand, settings: EmailSettings) -> str:
    claims = {
        "aud": TOKEN_AUDIENCE,
        "tenant": command.tenant_id,
        "recipient": command.recipient_id,
        "category": command.category,
        "channel": command.channel,
        "address": command.address,
    }
    secret = settings.unsubscribe_secret.get_secret_value()
    return jwt.encode(claims, secret, algorithm="HS256", json_encoder=_Utf8)


class _Utf8(json.JSONEncoder):
    """Claims in UTF-8 rather than `\\u` escapes, which cost a non-ASCII id six bytes a character before
    base64, and pushed the one-line List-Unsubscribe header over the 998 octets a line may hold."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**(options | {"ensure_ascii": False}))


def unsubscribe_claims(token: str, settings: EmailSettings) -> dict[str, Any]:
    """The claims of a token this gateway issued; raises `jwt.InvalidTokenError` for anything else."""
    claims: dict[str, Any] = jwt.decode(
        token, settings.unsubscribe_secret.get_secret_value(), algorithms=["HS256"], audience=TOKEN_AUDIENCE
    )
    return claims


def headers(command: DeliveryCommand, settings: EmailSettings) -> dict[str, str]:
    """The headers beyond From/To/Subject that every provider must pass through."""
    out = {"Message-ID": message_id(command, settings)}
    if command.priority != "critical":
        link = f"<{settings.unsubscribe_url}/{unsubscribe_token(command, settings)}>"
        if len(f"List-Unsubscribe: {link}".encode()) <= MAX_LINE:
            out["List-Unsubscribe"] = link
            out["List-Unsubscribe-Post"] = ONE_CLICK
        else:
            log.warning(
                "no List-Unsubscribe on delivery %s: its link is too long for one line", command.delivery_id
            )
    return out


def sender(settings: EmailSettings) -> str:
    return formataddr((settings.from_name, settings.from_address))


class _Text(HTMLParser):
    BLOCKS = frozenset(
        {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head", "title"):
            self.skip += 1
        elif tag in self.BLOCKS:
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head", "title"):
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCKS:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.out.append(re.sub(r"[ \t\r\n]+", " ", data))


def text_of(html: str) -> str:
    """A plain-text rendering of an HTML body: mail without a text alternative scores worse with spam
    filters and is unreadable in text-only clients, so an HTML-only command still gets one."""
    parser = _Text()
    parser.feed(html)
    parser.close()
    lines = (line.strip() for line in "".join(parser.out).splitlines())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def parts(command: DeliveryCommand, settings: EmailSettings) -> tuple[str, str, str | None]:
    """Subject, text and HTML (tracked as configured); a command with neither text nor HTML is refused
    permanently."""
    content = command.content
    subject = " ".join(line for line in (content.subject or content.title or "").splitlines() if line)
    if not content.body and not content.html:
        raise DeliveryRejected("email has no body")
    html = content.html
    if html is not None:
        html = tracked(
            html,
            command,
            base=settings.tracking_url,
            secret=settings.unsubscribe_secret.get_secret_value(),
            opens=settings.track_opens,
            clicks=settings.track_clicks,
            skip=settings.unsubscribe_url,
        )
    return subject, content.body or text_of(content.html or ""), html


def deliverable(address: str) -> str:
    """The address as it goes on the wire, its domain in IDNA (`bücher.de` as `xn--bcher-kva.de`): an
    SMTP server without SMTPUTF8 refused it, which read as the provider down (retried through every tier,
    counted against the circuit), SES takes 7-bit addresses only, and in a To header the domain became
    an RFC 2047 encoded word, which RFC 2047 forbids in an address. Raises DeliveryRejected (permanent)
    for a domain IDNA refuses, and for an address that is no addr-spec (`<a@x.com`, `a@[x.com`): the
    recipient events' pattern lets them through, and the header parser's errors (not ValueErrors) became
    a `provider_error` with a stack trace on every send, or the provider's own refusal."""
    local, at, domain = address.rpartition("@")
    if at and not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise DeliveryRejected(f"invalid email domain: {exc}") from None
    wire = f"{local}@{domain}" if at else address
    try:
        Address(addr_spec=wire) if local.isascii() else Address(username=local, domain=domain)
    except (ValueError, IndexError, AttributeError, email.errors.MessageError) as exc:
        raise DeliveryRejected(f"invalid email address: {exc}") from None
    return wire


def build(command: DeliveryCommand, settings: EmailSettings) -> EmailMessage:
    """The message. A non-ASCII local part (`jürgen@example.de`) is written as it is, for a server that
    takes SMTPUTF8 (`smtp.py` asks for it, and refuses the send when the server has not got it): parsed
    from the address text it was refused as invalid before any server was asked."""
    subject, text, html = parts(command, settings)
    address = deliverable(command.address)
    local, _, domain = address.rpartition("@")
    to = Address(addr_spec=address) if local.isascii() else Address(username=local, domain=domain)
    msg = EmailMessage(policy=BODY_POLICY)
    msg["From"] = sender(settings)
    msg["To"] = str(to)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.now(UTC))
    for name, value in headers(command, settings).items():
        if name == "List-Unsubscribe":
            msg.set_raw(name, value)
        else:
            msg[name] = value
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    msg.policy = POLICY
    return msg
