"""Sends a DeliveryCommand as an email over SMTP (aiosmtplib): STARTTLS, implicit TLS or plain, with auth.

Connections are pooled (`pool_size` per provider instance) because the TLS handshake and EHLO/AUTH cost
more than a message; a connection that saw any error is discarded, never reused.

Replies map to the provider contract by RFC 5321 / RFC 3463 codes:

* a 4xx refusing the recipient (RCPT: 450 4.7.1 greylisted, 452 4.2.2 mailbox full) -> a rejection that
  is not permanent: that message is retried, and the provider's circuit, which every other recipient
  shares, stays closed
* 4xx with enhanced status 4.7.x elsewhere (MAIL FROM: rate limiting of our sender) -> ProviderThrottled
* 421 and every other 4xx -> ProviderUnavailable
  (all carry `retry_after = min_retry_seconds`: a transient SMTP refusal is retried no sooner than that)
* 530/534/535 authentication failures -> ProviderUnavailable: the provider is misconfigured, not the
  message wrong, so the chain fails over and the circuit opens instead of failing every message
* a 5xx refusing the recipient (RCPT: 550 5.1.1 unknown user, 553 bad address; a 550/551/553 without
  an enhanced code; at DATA only an explicit 5.1.x) -> DeliveryRejected, address dead (a hard bounce
  the suppression projection acts on)
* a 5xx refusing our sender (MAIL FROM: 553 5.1.8 sender domain not found, 550 5.7.1 not permitted)
  -> ProviderUnavailable: our configuration, true for every recipient, so it must not mark them dead;
  but 5.3.x and 5.5.x there are the message's (552 5.3.4 over the SIZE the server takes), below
* a 5xx refusing the session (554 at the greeting, EHLO refused: our IP listed, a relay not for us)
  -> ProviderUnavailable: every message would meet it, so the chain fails over
* any other 5xx (550 message rejected as spam at DATA) -> DeliveryRejected, permanent, address alive
* timeouts, refused connections, disconnects -> ProviderUnavailable
"""

from __future__ import annotations

import asyncio
import re
import ssl
from email.message import EmailMessage
from typing import Literal

import aiohttp
import aiosmtplib
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateways.base import DeliveryRejected, Provider, ProviderThrottled, ProviderUnavailable, Sent
from gateways.email._message import POLICY, EmailSettings, build, deliverable, message_id
from tidings.events import DeliveryCommand

ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})")
AUTH_CODES = {530, 534, 535}
Stage = Literal["rcpt", "sender", "data", "session", "auth", "other"]
STAGES: dict[type[Exception], Stage] = {
    aiosmtplib.SMTPAuthenticationError: "auth",
    aiosmtplib.SMTPRecipientRefused: "rcpt",
    aiosmtplib.SMTPSenderRefused: "sender",
    aiosmtplib.SMTPDataError: "data",
    aiosmtplib.SMTPConnectResponseError: "session",
    aiosmtplib.SMTPHeloError: "session",
}


class SmtpSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TIDINGS_SMTP_", frozen=True, hide_input_in_errors=True)

    host: str = "127.0.0.1"
    port: int = Field(default=587, gt=0, lt=65536)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: SecretStr | None = None
    ca_file: str | None = Field(default=None, description="Extra CA bundle, e.g. for a private relay.")
    timeout: float = Field(default=30.0, gt=0)
    pool_size: int = Field(default=4, ge=1)
    min_retry_seconds: float = Field(default=1800.0, ge=0, description="SMTP 4xx: retry no sooner.")


def classify(code: int, message: str, min_retry: float, stage: Stage = "rcpt") -> Exception:
    """`stage`: the command the server refused (RCPT TO, MAIL FROM, DATA, or connecting and the rest)."""
    enhanced = ENHANCED.match(message)
    detail = f"smtp {code} {message.strip()}"[:300]
    if code in AUTH_CODES or stage == "auth":
        return ProviderUnavailable(f"smtp authentication failed: {detail}", min_retry)
    if stage == "sender" and 500 <= code < 600 and not (enhanced and enhanced.group(2) in ("3", "5")):
        return ProviderUnavailable(f"smtp refused our sender: {detail}", min_retry)
    if stage == "session" and 500 <= code < 600:
        return ProviderUnavailable(f"smtp refused the session: {detail}", min_retry)
    if 400 <= code < 500:
        if stage == "rcpt" and code != 421:
            return DeliveryRejected(detail, permanent=False, retry_after=min_retry)
        if enhanced and enhanced.group(2) == "7" and code != 421:
            return ProviderThrottled(detail, min_retry)
        return ProviderUnavailable(detail, min_retry)
    if 500 <= code < 600:
        mailbox = enhanced is not None and enhanced.group(2) == "1"
        dead = code in (550, 551, 553) and (mailbox or (enhanced is None and stage == "rcpt"))
        return DeliveryRejected(detail, permanent=True, address_dead=dead)
    return ProviderUnavailable(f"unexpected smtp reply: {detail}")


class Smtp(Provider):
    channel = "email"
    name = "smtp"
    settings_class = SmtpSettings

    def __init__(self, settings: SmtpSettings | None = None, email: EmailSettings | None = None) -> None:
        self.settings = settings or SmtpSettings()
        self.email = email or EmailSettings()
        self.idle: list[aiosmtplib.SMTP] = []
        self.slots = asyncio.Semaphore(self.settings.pool_size)

    def _client(self) -> aiosmtplib.SMTP:
        s = self.settings
        context = None
        if s.security != "none":
            context = ssl.create_default_context(cafile=s.ca_file)
        return aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            username=s.username,
            password=s.password.get_secret_value() if s.password else None,
            use_tls=s.security == "tls",
            start_tls=s.security == "starttls",
            tls_context=context,
            timeout=s.timeout,
        )

    async def send(self, session: aiohttp.ClientSession, command: DeliveryCommand) -> Sent:
        message = build(command, self.email)
        async with self.slots:
            client = self.idle.pop() if self.idle else None
            try:
                if client is None or not client.is_connected:
                    client = self._client()
                    await client.connect()
                refused = await self._deliver(client, message, command)
            except aiosmtplib.SMTPRecipientsRefused as exc:
                first = exc.recipients[0]
                raise self._discard(client, classify(first.code, first.message, self._floor())) from None
            except aiosmtplib.SMTPResponseException as exc:
                stage = STAGES.get(type(exc), "other")
                raise self._discard(client, classify(exc.code, exc.message, self._floor(), stage)) from None
            except (aiosmtplib.SMTPException, OSError) as exc:
                raise self._discard(
                    client, ProviderUnavailable(f"smtp connection failed: {type(exc).__name__}: {exc}")
                ) from None
            if refused:
                response = next(iter(refused.values()))
                raise self._discard(client, classify(response.code, response.message, self._floor()))
            self.idle.append(client)
        return Sent(self.name, message_id(command, self.email))

    async def _deliver(
        self, client: aiosmtplib.SMTP, message: EmailMessage, command: DeliveryCommand
    ) -> dict[str, aiosmtplib.SMTPResponse]:
        """Send the message written with our policy: aiosmtplib's `send_message` writes it with its
        own, folding headers at 78, so the one-click `List-Unsubscribe` URL went out as RFC 2047
        encoded words, which mail clients do not read as a URL."""
        if client.is_ehlo_or_helo_needed:
            try:
                await client.ehlo()
            except aiosmtplib.SMTPHeloError:
                await client.helo()
        sender, recipient = self.email.from_address, deliverable(command.address)
        utf8 = not (sender + recipient).isascii()
        options = ["SMTPUTF8"] if utf8 else []
        if utf8 and not client.supports_extension("smtputf8"):
            raise DeliveryRejected(
                f"smtp: the server takes no internationalised address (SMTPUTF8): {recipient}"
            )
        policy = POLICY.clone(utf8=utf8)
        if client.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        else:
            policy = policy.clone(cte_type="7bit")
        refused, _ = await client.sendmail(
            sender, [recipient], message.as_bytes(policy=policy), mail_options=options
        )
        return refused

    def _floor(self) -> float:
        return self.settings.min_retry_seconds

    def _discard(self, client: aiosmtplib.SMTP | None, error: Exception) -> Exception:
        if client is not None and client.is_connected:
            client.close()
        return error

    async def close(self) -> None:
        while self.idle:
            client = self.idle.pop()
            if client.is_connected:
                try:
                    await asyncio.wait_for(client.quit(), timeout=2)
                except (aiosmtplib.SMTPException, OSError, TimeoutError):
                    client.close()
