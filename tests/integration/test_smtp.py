"""The SMTP provider against a local aiosmtpd server: TLS, auth, the message it writes, pooling."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import re
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateways.base import DeliveryRejected, Provider, ProviderThrottled, ProviderUnavailable, Sent
from gateways.email._message import EmailSettings, unsubscribe_claims
from gateways.email.smtp import classify
from tests.servers.smtp import SmtpServer
from tidings.events import RenderedContent


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return folder / "cert.pem", folder / "key.pem"


def server_context(files: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*files)
    return context


async def send_all(server: SmtpServer, provider: Provider, count: int, **changes: Any) -> list[Any]:
    results: list[Any] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            try:
                results.append(await provider.send(session, server.command(**changes)))
            except Exception as exc:
                results.append(exc)
    await provider.close()
    return results


def test_starttls_with_auth_writes_the_documented_message(tls_files: tuple[Path, Path]) -> None:
    async def scenario() -> tuple[list[Any], SmtpServer]:
        async with SmtpServer(tls=server_context(tls_files), login=("relay", "s3cret")) as server:
            provider = server.provider(
                security="starttls",
                ca_file=str(tls_files[0]),
                username="relay",
                password="s3cret",
                pool_size=2,
            )
            results = await send_all(server, provider, 6)
            return results, server

    results, server = asyncio.run(scenario())
    assert all(isinstance(r, Sent) for r in results), results
    assert len(server.accepted) == 6 and len(server.protocols) <= 2
    message = server.accepted[0]
    sent = results[0]
    assert message["Message-ID"] == sent.provider_message_id and sent.provider_message_id.endswith(
        "@tidings.localhost>"
    )
    assert (
        message["From"] == "tidings <notifications@tidings.localhost>" and message["To"] == "ann@example.com"
    )
    assert (
        message["Subject"] == "Your order shipped" and message.get_content_type() == "multipart/alternative"
    )
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = str(message["List-Unsubscribe"]).strip("<>")
    claims = unsubscribe_claims(url.rsplit("/", 1)[1], EmailSettings())
    assert (claims["tenant"], claims["recipient"], claims["category"]) == ("acme", "ann", "orders")
    with pytest.raises(jwt.InvalidTokenError):
        unsubscribe_claims(url.rsplit("/", 1)[1][:-4] + "AAAA", EmailSettings())


def test_critical_mail_has_no_unsubscribe_and_text_only_is_single_part() -> None:
    async def scenario() -> SmtpServer:
        async with SmtpServer() as server:
            content = RenderedContent(subject="Reset your password", body="Use code 123456.")
            await send_all(server, server.provider(), 1, priority="critical", content=content)
            return server

    [message] = asyncio.run(scenario()).accepted
    assert "List-Unsubscribe" not in message and message.get_content_type() == "text/plain"
    assert message.get_content().strip() == "Use code 123456."


def test_an_internationalised_domain_goes_out_in_idna() -> None:
    """A server without SMTPUTF8 refused `ann@bücher.de`, which read as the provider down (retried through
    every tier), and the To header carried the domain as an RFC 2047 encoded word."""

    async def scenario() -> tuple[SmtpServer, list[Any]]:
        async with SmtpServer() as server:
            return server, await send_all(server, server.provider(), 1, address="ann@bücher.de")

    server, [sent] = asyncio.run(scenario())
    assert isinstance(sent, Sent), sent
    [message] = server.accepted
    assert message["To"] == "ann@xn--bcher-kva.de"


def test_a_non_ascii_local_part_goes_to_a_server_that_takes_smtputf8_and_no_other() -> None:
    """`jürgen@example.de` was refused as an invalid address before any server was asked."""

    async def scenario(smtputf8: bool) -> tuple[SmtpServer, list[Any]]:
        async with SmtpServer() as server:
            server.smtputf8 = smtputf8
            return server, await send_all(server, server.provider(), 1, address="jürgen@example.de")

    server, [sent] = asyncio.run(scenario(True))
    assert isinstance(sent, Sent), sent
    assert server.envelopes[0][1] == ["jürgen@example.de"] and server.accepted[0]["To"] == "jürgen@example.de"
    _, [refused] = asyncio.run(scenario(False))
    assert isinstance(refused, DeliveryRejected) and "SMTPUTF8" in refused.reason, refused


def test_a_sender_with_an_internationalised_domain_goes_out_in_idna(monkeypatch: pytest.MonkeyPatch) -> None:
    """`formataddr` raised on `benachrichtigung@bücher.de`: every send was dead-lettered."""
    monkeypatch.setenv("TIDINGS_EMAIL_FROM_ADDRESS", "benachrichtigung@bücher.de")

    async def scenario() -> tuple[SmtpServer, list[Any]]:
        async with SmtpServer() as server:
            return server, await send_all(server, server.provider(), 1)

    server, [sent] = asyncio.run(scenario())
    assert isinstance(sent, Sent), sent
    [message] = server.accepted
    assert message["From"] == "tidings <benachrichtigung@xn--bcher-kva.de>"


def test_the_unsubscribe_header_goes_over_the_wire_as_one_plain_url_and_body_lines_keep_to_76() -> None:
    """aiosmtplib's send_message wrote the message with its own policy, folding the long one-click URL
    into RFC 2047 encoded words, which mail clients do not read as a URL (parsing the header back hid
    it); quoted-printable lines ran to 78."""
    subject = "Ihre Bestellung für Zoë ist unterwegs " * 3
    content = RenderedContent(subject=subject, body="Zoë " + "a" * 400, html="<p>" + "word " * 300 + "</p>")

    async def scenario() -> SmtpServer:
        async with SmtpServer() as server:
            await send_all(server, server.provider(), 1, content=content)
            return server

    [raw] = asyncio.run(scenario()).raw
    lines = raw.split(b"\r\n")
    [unsubscribe] = [line for line in lines if line.startswith(b"List-Unsubscribe:")]
    assert b"=?" not in unsubscribe and b"<http" in unsubscribe
    words = re.findall(rb"=\?[^?]+\?[bBqQ]\?[^?]*\?=", raw)
    assert words and max(len(w) for w in words) <= 75, "RFC 2047 encoded words are at most 75 characters"
    body = raw.split(b"\r\n\r\n", 1)[1]
    assert max(len(line) for line in body.split(b"\r\n")) <= 76


def test_implicit_tls(tls_files: tuple[Path, Path]) -> None:
    async def scenario() -> list[Any]:
        async with SmtpServer(tls=server_context(tls_files), implicit_tls=True) as server:
            return await send_all(server, server.provider(security="tls", ca_file=str(tls_files[0])), 2)

    assert all(isinstance(r, Sent) for r in asyncio.run(scenario()))


def test_untrusted_certificate_and_wrong_password_fail_over_not_reject(tls_files: tuple[Path, Path]) -> None:
    async def scenario() -> list[Any]:
        async with SmtpServer(tls=server_context(tls_files), login=("relay", "s3cret")) as server:
            untrusted = await send_all(
                server, server.provider(security="starttls", username="relay", password="x"), 1
            )
            wrong = server.provider(
                security="starttls", ca_file=str(tls_files[0]), username="relay", password="x"
            )
            return [*untrusted, *await send_all(server, wrong, 1)]

    untrusted, wrong = asyncio.run(scenario())
    assert isinstance(untrusted, ProviderUnavailable)
    assert isinstance(wrong, ProviderUnavailable) and "authentication" in str(wrong)


def test_dead_mailbox_is_a_hard_bounce_and_policy_refusal_is_not() -> None:
    async def scenario() -> list[Any]:
        async with SmtpServer() as server:
            server.mode = "reject"
            return await send_all(server, server.provider(), 1)

    [dead] = asyncio.run(scenario())
    assert isinstance(dead, DeliveryRejected) and dead.permanent and dead.address_dead
    policy = classify(554, "5.7.1 Message rejected as spam", 60)
    assert isinstance(policy, DeliveryRejected) and policy.permanent and not policy.address_dead
    throttled = classify(451, "4.7.1 Sender rate limit exceeded", 60, "sender")
    assert isinstance(throttled, ProviderThrottled) and throttled.retry_after == 60
    shutting = classify(421, "4.3.2 Service shutting down", 60, "rcpt")
    assert isinstance(shutting, ProviderUnavailable) and shutting.retry_after == 60
    listed = classify(554, "5.7.1 Service unavailable; client host blocked", 60, "session")
    assert isinstance(listed, ProviderUnavailable) and "refused the session" in str(listed)
    from gateways.email.smtp import STAGES

    assert {STAGES[aiosmtplib.SMTPConnectResponseError], STAGES[aiosmtplib.SMTPHeloError]} == {"session"}


@pytest.mark.parametrize(
    "reply", [(538, "5.7.11 Encryption required"), (504, "5.7.4 Unrecognized auth type")]
)
def test_any_refused_authentication_is_our_setup_not_the_message(reply: tuple[int, str]) -> None:
    """Only 530/534/535 counted as authentication: a 538 or 504 to AUTH failed every message for good
    while the provider was deemed up, and no other provider was tried."""
    from gateways.email.smtp import STAGES

    refused = classify(*reply, 60, STAGES[aiosmtplib.SMTPAuthenticationError])
    assert isinstance(refused, ProviderUnavailable) and "authentication" in str(refused), refused


@pytest.mark.parametrize(
    ("stage", "reply", "expected"),
    [
        ("sender", "553 5.1.8 <tidings@example.com>: Sender address rejected: Domain not found", "config"),
        ("sender", "550 5.7.1 Sender not permitted", "config"),
        ("sender", "552 5.3.4 Message size exceeds fixed maximum message size", "rejected"),
        ("data", "550 Message rejected: looks like spam", "rejected"),
        ("data", "554 5.7.1 Message content rejected", "rejected"),
        ("data", "550 5.1.1 User unknown", "dead"),
    ],
)
def test_a_refused_sender_or_message_does_not_mark_the_recipient_dead(
    stage: str, reply: str, expected: str
) -> None:
    """A refused MAIL FROM is our configuration and true for every recipient: failing over, not hard
    bounces for the whole audience. A message refused at DATA is that message's, not the address's,
    unless the reply says 5.1.x."""

    async def scenario() -> Any:
        async with SmtpServer() as server:
            setattr(server, f"refuse_{stage}", reply)
            return (await send_all(server, server.provider(), 1))[0]

    error = asyncio.run(scenario())
    if expected == "config":
        assert isinstance(error, ProviderUnavailable) and "refused our sender" in str(error)
    else:
        assert isinstance(error, DeliveryRejected) and error.permanent
        assert error.address_dead == (expected == "dead")


@pytest.mark.parametrize(
    "reply",
    [
        "450 4.7.1 <{rcpt}>: Recipient address rejected: Greylisted, try again later",
        "452 4.2.2 <{rcpt}>: Mailbox full",
    ],
)
def test_a_recipient_refused_for_now_retries_that_message_and_keeps_the_circuit_closed(reply: str) -> None:
    """A greylisted or full mailbox is one recipient's: a provider throttle would open the circuit
    every other recipient's email shares (for the 30-minute floor)."""

    async def scenario() -> Any:
        async with SmtpServer() as server:
            server.refuse_rcpt = reply
            return (await send_all(server, server.provider(min_retry_seconds=60), 1))[0]

    error = asyncio.run(scenario())
    assert isinstance(error, DeliveryRejected) and not error.permanent and not error.address_dead, error
    assert error.retry_after == 60
