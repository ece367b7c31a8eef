"""The SendGrid, SES and Postmark providers against their local API servers, beyond the shared contract:
what each request carries (Message-ID, RFC 8058 unsubscribe headers, both bodies, From/To/Subject, the ids
for callbacks) and the vendor-specific refusals (credentials, SigV4, inactive recipients)."""

from __future__ import annotations

import asyncio
from email.utils import parseaddr
from typing import Any

import aiohttp
import pytest

from gateways._http import MAX_RETRY_AFTER_S
from gateways.base import DeliveryRejected, ProviderThrottled, ProviderUnavailable, Sent
from gateways.email._message import ONE_CLICK, EmailSettings, unsubscribe_claims
from tests.servers.email_apis import HttpApiServer, PostmarkServer, SendGridServer, SesServer, email_command
from tests.servers.http import send_once as send
from tidings.events import RenderedContent

SERVERS: dict[str, type[HttpApiServer]] = {
    "sendgrid": SendGridServer,
    "ses": SesServer,
    "postmark": PostmarkServer,
}
EMAIL = EmailSettings()


def view(name: str, accepted: Any) -> dict[str, Any]:
    """One accepted request as From, To, Subject, custom headers, text and HTML, whatever the API."""
    if name == "sendgrid":
        content = {c["type"]: c["value"] for c in accepted["content"]}
        return {
            "from": accepted["from"]["email"],
            "to": [t["email"] for p in accepted["personalizations"] for t in p["to"]],
            "subject": accepted["subject"],
            "headers": accepted["headers"],
            "text": content.get("text/plain"),
            "html": content.get("text/html"),
        }
    if name == "ses":
        message = accepted["message"]
        text, html = message.get_body(("plain",)), message.get_body(("html",))
        return {
            "from": parseaddr(message["From"])[1],
            "to": [parseaddr(message["To"])[1]],
            "subject": message["Subject"],
            "headers": {
                k: str(message[k])
                for k in ("Message-ID", "List-Unsubscribe", "List-Unsubscribe-Post")
                if k in message
            },
            "text": text.get_content().rstrip("\r\n") if text else None,
            "html": html.get_content().rstrip("\r\n") if html else None,
        }
    return {
        "from": parseaddr(accepted["From"])[1],
        "to": [accepted["To"]],
        "subject": accepted["Subject"],
        "headers": {h["Name"]: h["Value"] for h in accepted["Headers"]},
        "text": accepted.get("TextBody"),
        "html": accepted.get("HtmlBody"),
    }


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_request_carries_the_message(name: str) -> None:
    command = email_command()
    result, server = send(SERVERS[name], command)
    assert isinstance(result, Sent) and result.provider == name and result.provider_message_id
    (accepted,) = server.accepted
    got = view(name, accepted)
    assert got["from"] == EMAIL.from_address
    assert got["to"] == [command.address]
    assert got["subject"] == command.content.subject
    assert (got["text"], got["html"]) == (command.content.body, command.content.html)
    headers = got["headers"]
    assert headers["Message-ID"] == f"<{command.delivery_id}@{EMAIL.message_id_domain}>"
    assert headers["List-Unsubscribe-Post"] == ONE_CLICK
    link = headers["List-Unsubscribe"]
    assert link.startswith(f"<{EMAIL.unsubscribe_url}/") and link.endswith(">")
    claims = unsubscribe_claims(link[1:-1].rsplit("/", 1)[1], EMAIL)
    assert (claims["tenant"], claims["recipient"], claims["category"]) == ("acme", "user-42", "billing")


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_critical_messages_carry_no_unsubscribe_headers(name: str) -> None:
    command = email_command(priority="critical")
    result, server = send(SERVERS[name], command)
    assert isinstance(result, Sent)
    headers = view(name, server.accepted[0])["headers"]
    assert headers == {"Message-ID": f"<{command.delivery_id}@{EMAIL.message_id_domain}>"}


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_html_only_message_gets_a_text_alternative(name: str) -> None:
    html = "<html><head><style>p{}</style></head><body><p>Hi &amp; welcome</p><p>Line <b>two</b></p></body>"
    command = email_command().model_copy(update={"content": RenderedContent(subject="Hi", html=html)})
    result, server = send(SERVERS[name], command)
    assert isinstance(result, Sent), result
    got = view(name, server.accepted[0])
    assert (got["text"].replace("\r\n", "\n").strip(), got["html"]) == ("Hi & welcome\n\nLine two", html)


def test_sendgrid_custom_args_tie_events_back() -> None:
    command = email_command()
    _, server = send(SendGridServer, command)
    assert server.accepted[0]["custom_args"] == {
        "tenant_id": "acme",
        "delivery_id": str(command.delivery_id),
        "notification_id": str(command.notification_id),
        "recipient_id": "user-42",
    }


def test_sendgrid_wrong_key_fails_over_naming_the_credentials() -> None:
    result, server = send(SendGridServer, api_key="SG.revoked")
    assert isinstance(result, ProviderUnavailable)
    assert "credentials" in str(result) and "authorization grant is invalid" in str(result)
    assert server.accepted == [] and server.requests == 1


def test_sendgrid_validation_errors_are_reported() -> None:
    command = email_command().model_copy(update={"address": "ann@localhost"})
    result, server = send(SendGridServer, command)
    assert isinstance(result, DeliveryRejected) and result.permanent, result
    assert "Does not contain a valid address." in result.reason and server.accepted == []


def test_sendgrid_a_message_without_a_subject_takes_its_first_line() -> None:
    """SendGrid refuses mail without a subject, which SMTP, SES and Postmark send: it was FAILED for good."""
    body = "\n  Your code is 123456, valid for ten minutes from now, so use it soon please, thank you.\nbye"
    command = email_command().model_copy(update={"content": RenderedContent(body=body)})
    result, server = send(SendGridServer, command)
    assert isinstance(result, Sent), result
    assert server.accepted[0]["subject"] == body.split("\n")[1].strip()[:77] + "…"


def test_sendgrid_throttle_falls_back_to_the_rate_limit_reset() -> None:
    def no_retry_after(server: SendGridServer) -> None:
        server.mode, server.send_retry_after, server.retry_after = "throttle", False, 30

    result, _ = send(SendGridServer, setup=no_retry_after)
    assert isinstance(result, ProviderThrottled) and result.retry_after is not None
    assert 28 <= result.retry_after <= 30


def test_sendgrid_a_rate_limit_reset_far_ahead_waits_at_most_a_day() -> None:
    """A reset in milliseconds (or `inf`) held the circuit open for as long: email stayed on the backup
    until a restart."""

    def far_reset(server: SendGridServer) -> None:
        server.mode, server.send_retry_after, server.retry_after = "throttle", False, 10**12

    result, _ = send(SendGridServer, setup=far_reset)
    assert isinstance(result, ProviderThrottled) and result.retry_after == MAX_RETRY_AFTER_S, result


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_a_redirect_is_our_setup_and_fails_over_not_the_message(name: str) -> None:
    """An API that answers 308 (a base URL with http:// behind a redirecting proxy) refused nothing of the
    message: SendGrid and SES failed every email for good, with no failover and no retry."""

    def moved(server: HttpApiServer) -> None:
        server.moved = "https://api.example.com/"

    result, server = send(SERVERS[name], setup=moved)
    assert isinstance(result, ProviderUnavailable) and "308" in str(result), result
    assert server.accepted == []


def test_ses_request_is_raw_mime_with_tags_and_configuration_set() -> None:
    command = email_command()
    result, server = send(SesServer, command, configuration_set="tidings")
    assert isinstance(result, Sent)
    request = server.accepted[0]["request"]
    assert request["Destination"] == {"ToAddresses": [command.address]}
    assert request["ConfigurationSetName"] == "tidings"
    tags = {t["Name"]: t["Value"] for t in request["EmailTags"]}
    assert tags["delivery_id"] == str(command.delivery_id) and tags["recipient_id"] == "user-42"


def test_ses_signature_is_checked_by_the_server() -> None:
    result, server = send(SesServer, secret_access_key="wrong-secret")
    assert isinstance(result, ProviderUnavailable)
    assert "credentials" in str(result) and "SignatureDoesNotMatch" in str(result)
    assert server.accepted == [] and server.requests == 1


def test_ses_session_token_is_sent_and_signed() -> None:
    def with_token(server: SesServer) -> None:
        server.session_token = "FwoGZXIvYXdzEJr-session"

    result, server = send(SesServer, setup=with_token)
    assert isinstance(result, Sent) and len(server.accepted) == 1

    async def without_token_on_the_provider() -> Any:
        async with SesServer() as server:
            provider = server.provider(timeout=2.0)
            server.session_token = "FwoGZXIvYXdzEJr-session"
            async with aiohttp.ClientSession() as session:
                with pytest.raises(ProviderUnavailable, match="UnrecognizedClientException"):
                    await provider.send(session, server.command())

    asyncio.run(without_token_on_the_provider())


def test_ses_unknown_configuration_set_is_our_setup_and_fails_over() -> None:
    """Every message names the configuration set: refused for good, each was FAILED while the provider
    was deemed up, and no other provider of the chain was tried."""
    result, _ = send(SesServer, configuration_set="missing")
    assert isinstance(result, ProviderUnavailable) and "NotFoundException" in str(result), result


def test_ses_takes_messages_for_the_longest_ids_with_every_line_within_998_octets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The one-line unsubscribe link carries the ids in a signed token: with non-ASCII ids escaped as
    `\\uXXXX` its line passed the 1,000 characters SES takes, and the message was refused for good.
    Longer still, the message goes without the header rather than not at all."""
    japanese = email_command().model_copy(update={"recipient_id": "山田太郎のアカウント" * 10})
    result, server = send(SesServer, japanese)
    assert isinstance(result, Sent), result
    assert "List-Unsubscribe" in server.accepted[0]["message"]
    monkeypatch.setenv("TIDINGS_EMAIL_UNSUBSCRIBE_URL", "https://unsubscribe.example.com/" + "u" * 100)
    monkeypatch.setenv("TIDINGS_EMAIL_UNSUBSCRIBE_SECRET", "a-secret-of-our-own-" + "s" * 32)
    longest = email_command().model_copy(update={"recipient_id": "ü" * 256, "tenant_id": "t" * 256})
    result, server = send(SesServer, longest)
    assert isinstance(result, Sent), result
    assert "List-Unsubscribe" not in server.accepted[0]["message"]


def test_ses_a_sender_identity_not_verified_is_our_setup_and_fails_over() -> None:
    """MessageRejected "Email address is not verified" names the sender, lapsed or verified in another
    region: every message was FAILED for good, and no other provider of the chain tried."""

    def unverified(server: SesServer) -> None:
        server.mode = "unverified"

    result, _ = send(SesServer, setup=unverified)
    assert isinstance(result, ProviderUnavailable) and "not verified" in str(result), result
    rejected, _ = send(SesServer, setup=lambda server: setattr(server, "mode", "reject"))
    assert isinstance(rejected, DeliveryRejected) and rejected.permanent, (
        "a message SES refuses stays refused"
    )


def test_postmark_a_sender_not_on_the_account_is_our_setup_and_fails_over() -> None:
    def unconfirmed(server: PostmarkServer) -> None:
        server.senders = {"someone@example.com"}

    result, server = send(PostmarkServer, setup=unconfirmed)
    assert isinstance(result, ProviderUnavailable) and "ErrorCode 400" in str(result), result
    assert server.accepted == []


def test_postmark_inactive_recipient_marks_the_address_dead() -> None:
    command = email_command(address="gone@example.com")
    result, server = send(PostmarkServer, command, setup=lambda s: s.inactive.add("gone@example.com"))
    assert isinstance(result, DeliveryRejected) and result.permanent and result.address_dead
    assert "406" in result.reason and server.accepted == []


def test_postmark_invalid_request_is_permanent_but_not_dead() -> None:
    command = email_command(address="ada@localhost")
    result, _ = send(PostmarkServer, command)
    assert isinstance(result, DeliveryRejected) and result.permanent and not result.address_dead
    assert "ErrorCode 300" in result.reason
    refused, server = send(PostmarkServer, email_command(address="not-an-address"))
    assert isinstance(refused, DeliveryRejected) and "invalid email address" in refused.reason
    assert server.requests == 0, "refused before any request"


def test_postmark_wrong_token_and_metadata() -> None:
    result, _ = send(PostmarkServer, server_token="00000000-0000-0000-0000-000000000000")
    assert isinstance(result, ProviderUnavailable) and "credentials" in str(result)
    command = email_command()
    result, server = send(PostmarkServer, command)
    assert isinstance(result, Sent)
    assert server.accepted[0]["MessageStream"] == "outbound"
    assert server.accepted[0]["Metadata"]["delivery_id"] == str(command.delivery_id)
