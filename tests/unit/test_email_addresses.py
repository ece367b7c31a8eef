"""Which addresses the email providers send to: `deliverable()` puts the domain in IDNA and refuses
what no parser reads as one address, as a permanent rejection before any provider is asked."""

import pytest

from gateways.base import DeliveryRejected
from gateways.email._message import deliverable


@pytest.mark.parametrize(
    ("address", "wire"),
    [
        ("ada@example.com", "ada@example.com"),
        ("jürgen@bücher.de", "jürgen@xn--bcher-kva.de"),
        ('"a b"@example.com', '"a b"@example.com'),
        ("a.b+tag@example.co", "a.b+tag@example.co"),
    ],
)
def test_an_address_goes_out_with_its_domain_in_idna(address: str, wire: str) -> None:
    assert deliverable(address) == wire


@pytest.mark.parametrize(
    "address", ["<a@x.com", "(a@x.com", "a@(x.com", "[a@x.com", "a@[x.com", "Boss<ceo@corp.com>", "a@b@c.com"]
)
def test_what_the_recipient_pattern_lets_through_but_is_no_address_is_refused_for_good(address: str) -> None:
    """Each passed `RecipientUpdated.email`'s pattern; the header parser's errors ended as a
    `provider_error` with a stack trace on every send (SMTP, SES), or went to SendGrid and Postmark."""
    with pytest.raises(DeliveryRejected, match="invalid email address") as refused:
        deliverable(address)
    assert not refused.value.retriable
