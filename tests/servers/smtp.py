"""A local SMTP server (aiosmtpd, in the test's event loop) answering in each contract mode."""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
import uuid
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP as SMTPProtocol
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from gateways.base import Provider
from gateways.email.smtp import Smtp, SmtpSettings
from tests.servers.base import Mode, register
from tidings.events import DeliveryCommand, RenderedContent

REPLIES: dict[str, str] = {
    "reject": "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown",
    "unavailable": "421 4.3.2 Service shutting down, closing transmission channel",
}


class Handler:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_RCPT(
        self, smtp: SMTPProtocol, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        mode = self.server.mode
        self.server.attempts += 1
        if mode == "timeout":
            await asyncio.sleep(self.server.stall)
        if mode == "reset":
            assert smtp.transport is not None
            smtp.transport.abort()
            return "250 OK"
        if mode in REPLIES:
            return REPLIES[mode].format(rcpt=address)
        if self.server.refuse_rcpt:
            return self.server.refuse_rcpt.format(rcpt=address)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_MAIL(
        self, smtp: SMTPProtocol, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.server.refuse_sender:
            return self.server.refuse_sender
        if self.server.mode == "throttle":
            return "451 4.7.1 Sender rate limit exceeded, slow down"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, smtp: SMTPProtocol, session: Session, envelope: Envelope) -> str:
        if self.server.refuse_data:
            return self.server.refuse_data
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.SMTP)
        assert isinstance(message, EmailMessage)
        self.server.accepted.append(message)
        self.server.raw.append(raw)
        self.server.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return f"250 2.0.0 Ok: queued as {uuid.uuid4().hex[:12].upper()}"


class SmtpServer:
    """`accepted` holds parsed RFC 5322 messages; `tls` serves STARTTLS with the given context."""

    def __init__(
        self,
        *,
        tls: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        login: tuple[str, str] | None = None,
        port: int = 0,
    ) -> None:
        self.mode: Mode = "ok"
        self.refuse_sender: str | None = None
        self.refuse_rcpt: str | None = None
        self.refuse_data: str | None = None
        """Replies to MAIL FROM, RCPT TO ({rcpt}: the address) and DATA instead of accepting them."""
        self.retry_after = 7
        self.stall = 5.0
        self.accepted: list[EmailMessage] = []
        self.raw: list[bytes] = []
        """Each accepted message as it came over the wire."""
        self.envelopes: list[tuple[str | None, list[str]]] = []
        self.tls, self.implicit_tls, self.login = tls, implicit_tls, login
        self.attempts = 0
        self.port = port
        self.protocols: list[SMTPProtocol] = []
        self.smtputf8 = False
        self.server: asyncio.Server | None = None

    def _protocol(self) -> SMTPProtocol:
        protocol = SMTPProtocol(
            Handler(self),
            hostname="smtp.test",
            tls_context=None if self.implicit_tls else self.tls,
            require_starttls=self.tls is not None and not self.implicit_tls,
            auth_required=self.login is not None,
            auth_require_tls=self.tls is not None,
            authenticator=self._authenticate if self.login else None,
            enable_SMTPUTF8=self.smtputf8,
        )
        self.protocols.append(protocol)
        return protocol

    async def __aenter__(self) -> SmtpServer:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            self._protocol, "127.0.0.1", self.port, ssl=self.tls if self.implicit_tls else None
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _authenticate(self, *args: Any) -> AuthResult:
        data = args[-1]
        ok = isinstance(data, LoginPassword) and (data.login.decode(), data.password.decode()) == self.login
        return AuthResult(success=ok, handled=False)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for protocol in self.protocols:
                if protocol.transport is not None:
                    protocol.transport.abort()
            await self.server.wait_closed()
            self.server = None

    def provider(self, *, timeout: float = 5.0, **settings: Any) -> Provider:
        fields: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "security": "none",
            "timeout": timeout,
            "min_retry_seconds": float(self.retry_after),
        }
        return Smtp(SmtpSettings(**(fields | settings)))

    def command(self, **changes: Any) -> DeliveryCommand:
        fields: dict[str, Any] = {
            "tenant_id": "acme",
            "delivery_id": uuid.uuid4(),
            "notification_id": uuid.uuid4(),
            "recipient_id": "ann",
            "notification_type": "order.shipped",
            "category": "orders",
            "channel": "email",
            "priority": "normal",
            "address": "ann@example.com",
            "content": RenderedContent(
                subject="Your order shipped", body="On its way.", html="<p>On its way.</p>"
            ),
        }
        return DeliveryCommand(**(fields | changes))


register("email", "smtp")(SmtpServer)
