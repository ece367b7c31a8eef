"""Email open and click tracking: which links are rewritten, that nothing else in the HTML changes, and
what the tokens say."""

import re
from typing import Any

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from gateways.email._message import EmailSettings, parts
from gateways.email.tracking import TRACK_AUDIENCE, tracked, tracking_claims
from tests.servers.sms import sms_command
from tidings.events import DeliveryCommand, RenderedContent

SECRET = "s" * 32
BASE = "https://t.example.com/t"
TOKEN = re.compile(rf"{re.escape(BASE)}/([oc])/([A-Za-z0-9_.-]+)")


def email(html: str, **changes: Any) -> DeliveryCommand:
    base = sms_command().model_copy(
        update={"channel": "email", "address": "ada@example.com", "content": RenderedContent(html=html)}
    )
    return base.model_copy(update=changes)


def track(html: str, command: DeliveryCommand | None = None, **options: Any) -> str:
    settings = {"opens": False, "clicks": True, "skip": "https://t.example.com/unsubscribe"} | options
    return tracked(html, command or email(html), base=BASE, secret=SECRET, **settings)


def clicks(html: str) -> list[str]:
    return [tracking_claims(token, SECRET)["u"] for kind, token in TOKEN.findall(html) if kind == "c"]


def untracked(html: str) -> str:
    """The HTML with every tracking link put back to a placeholder, to compare the rest byte for byte."""
    return TOKEN.sub("LINK", html)


def test_http_links_go_through_the_edge_and_the_rest_is_untouched() -> None:
    html = (
        '<html><body>\n<p>Hi <a class="x" href="https://shop.example.com/o/1?a=1&amp;b=2">order</a>,\r\n'
        "<A HREF='http://example.com/x' target=_blank>x</A> <a href=https://u.example.com/>u</a>\n"
        '<a href="mailto:help@example.com">mail</a> <a href="#top">top</a> <a href="/relative">r</a>\n'
        '<a data-tidings-notrack href="https://keep.example.com">keep</a>'
        '<a href="https://t.example.com/unsubscribe/abc">unsubscribe</a></p></body></html>'
    )
    out = track(html)
    assert clicks(out) == [
        "https://shop.example.com/o/1?a=1&b=2",
        "http://example.com/x",
        "https://u.example.com/",
    ]
    assert untracked(out) == (
        '<html><body>\n<p>Hi <a class="x" href="LINK">order</a>,\r\n'
        '<A HREF="LINK" target=_blank>x</A> <a href="LINK">u</a>\n'
        '<a href="mailto:help@example.com">mail</a> <a href="#top">top</a> <a href="/relative">r</a>\n'
        '<a data-tidings-notrack href="https://keep.example.com">keep</a>'
        '<a href="https://t.example.com/unsubscribe/abc">unsubscribe</a></p></body></html>'
    )


def test_the_open_pixel_goes_before_the_end_of_the_body_or_at_the_end() -> None:
    out = track("<html><body><p>x</p></BODY></html>", opens=True, clicks=False)
    assert re.fullmatch(rf'<html><body><p>x</p><img src="{BASE}/o/[^"]+"[^>]*></BODY></html>', out)
    assert track("<p>x</p>", opens=True, clicks=False).startswith('<p>x</p><img src="')


def test_tokens_name_the_delivery_and_verify_only_with_the_secret() -> None:
    command = email('<a href="https://a.example.com">a</a>')
    [(_, token)] = TOKEN.findall(track(command.content.html or "", command))
    claims = tracking_claims(token, SECRET)
    assert claims == {
        "aud": TRACK_AUDIENCE,
        "t": "acme",
        "r": command.recipient_id,
        "n": str(command.notification_id),
        "d": str(command.delivery_id),
        "u": "https://a.example.com",
    }
    with pytest.raises(jwt.InvalidTokenError):
        tracking_claims(token, "another secret, just as long as the first")
    unsubscribe = jwt.encode({"aud": "tidings:unsubscribe"}, SECRET, algorithm="HS256")
    with pytest.raises(jwt.InvalidTokenError):
        tracking_claims(unsubscribe, SECRET)


def test_critical_messages_and_disabled_tracking_are_left_alone() -> None:
    html = '<body><a href="https://reset.example.com/secret-token">reset</a></body>'
    assert track(html, email(html, priority="critical"), opens=True) == html
    assert track(html, opens=False, clicks=False) == html


def test_parts_tracks_the_html_and_derives_the_text_from_the_original() -> None:
    command = email('<p>See <a href="https://a.example.com/x">this</a></p>')
    settings = EmailSettings(
        track_clicks=True, track_opens=True, tracking_url=BASE, unsubscribe_secret=SecretStr(SECRET)
    )
    _, text, html = parts(command, settings)
    assert text == "See this" and html is not None
    assert clicks(html) == ["https://a.example.com/x"] and f"{BASE}/o/" in html
    assert parts(command, EmailSettings())[2] == command.content.html


SEGMENT = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="<>&\"'", blacklist_categories=["Cs"]), max_size=20),
    st.sampled_from(["<p>", "</p>", "<br/>", "\n", "\r\n", "<b class='x'>", "</b>", '<img src="a.png">']),
    st.builds(
        lambda path: f'<a href="https://example.com/{path}">l</a>',
        st.from_regex(r"[a-z0-9/]{0,12}", fullmatch=True),
    ),
)


@given(st.lists(SEGMENT, max_size=30))
def test_only_link_targets_change(segments: list[str]) -> None:
    html = "".join(segments)
    out = track(html)
    expected = re.sub(r'href="https://example.com/[a-z0-9/]*"', 'href="LINK"', html)
    assert untracked(out) == expected
    assert clicks(out) == re.findall(r'href="(https://example.com/[a-z0-9/]*)"', html)


def test_only_the_first_real_href_attribute_is_the_link() -> None:
    tricky = (
        '<a title="see href=x" href="https://real.example.com/">r</a>'
        '<a href="https://first.example.com/" href="https://second.example.com/">d</a>'
        "<a href=https://q.example.com/?x=1>q</a>"
        '<a href data-x=1 href="https://not-followed.example.com/">e</a>'
    )
    out = track(tricky)
    assert clicks(out) == [
        "https://real.example.com/",
        "https://first.example.com/",
        "https://q.example.com/?x=1",
    ]
    assert untracked(out) == (
        '<a title="see href=x" href="LINK">r</a>'
        '<a href="LINK" href="https://second.example.com/">d</a>'
        '<a href="LINK">q</a>'
        '<a href data-x=1 href="https://not-followed.example.com/">e</a>'
    )
