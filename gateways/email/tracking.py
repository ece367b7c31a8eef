"""Adds open and click tracking to an email's HTML: signed links to the HTTP edge, which records
NotificationOpened and NotificationClicked on notifications.engagement (`gateways/track.py`).

* Opens (`TIDINGS_EMAIL_TRACK_OPENS`): a 1x1 image `{tracking_url}/o/{token}` before `</body>`.
* Clicks (`TIDINGS_EMAIL_TRACK_CLICKS`): every `<a href>` to an http(s) URL points at
  `{tracking_url}/c/{token}` instead, which redirects to the original. The URL is inside the signed token,
  so the edge is no open redirect. Links marked `data-tidings-notrack`, and the unsubscribe link, are
  left alone; so is the text part (a rewritten URL there is unreadable).
* Critical messages are never tracked: a password-reset link must go straight to its site, not through
  a redirect that puts its secret in another server's log.

Tokens are HS256 JWTs with their own audience, signed with the unsubscribe secret, naming tenant,
recipient, notification and delivery (and the URL for a click). Only the start tags of links are
rewritten, found by the standard library's HTML parser; every other byte of the template's HTML is kept.
"""

from __future__ import annotations

import re
from html import unescape
from html.parser import HTMLParser
from typing import Any

import jwt

from tidings.events import DeliveryCommand

TRACK_AUDIENCE = "tidings:track"
NO_TRACK = "data-tidings-notrack"
ATTRIBUTE = re.compile(r"""[\s/]*([^\s"'>/=]+)(?:\s*=\s*("[^"]*"|'[^']*'|[^\s>]+))?""")
BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


def tracking_token(command: DeliveryCommand, secret: str, url: str | None = None) -> str:
    claims: dict[str, Any] = {
        "aud": TRACK_AUDIENCE,
        "t": command.tenant_id,
        "r": command.recipient_id,
        "n": str(command.notification_id),
        "d": str(command.delivery_id),
    }
    if url is not None:
        claims["u"] = url
    return jwt.encode(claims, secret, algorithm="HS256")


def tracking_claims(token: str, secret: str) -> dict[str, Any]:
    """The claims of a tracking token this gateway issued; raises `jwt.InvalidTokenError` otherwise."""
    claims: dict[str, Any] = jwt.decode(token, secret, algorithms=["HS256"], audience=TRACK_AUDIENCE)
    return claims


def first_href(raw: str) -> tuple[int, int, str] | None:
    """Where the value of a start tag's first `href` attribute is in `raw` (the span, quotes included)
    and the URL it holds: browsers follow the first of duplicated attributes, and a value such as
    `title="see href=x"` is not an attribute."""
    position = raw.find("<") + 1
    while position < len(raw) and not raw[position].isspace() and raw[position] not in "/>":
        position += 1
    while (match := ATTRIBUTE.match(raw, position)) and match.end() > position:
        position = match.end()
        if match.group(1).lower() == "href":
            if match.group(2) is None:
                return None
            value = match.group(2)
            url = unescape(value[1:-1] if value[0] in "\"'" else value).strip()
            return match.start(2), match.end(2), url
    return None


class _Links(HTMLParser):
    """Where each link's start tag is: (offset, raw tag text)."""

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=True)
        self.lines = [0] + [i + 1 for i, c in enumerate(source) if c == "\n"]
        self.found: list[tuple[int, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        raw = self.get_starttag_text()
        if tag != "a" or raw is None or any(name == NO_TRACK for name, _ in attrs):
            return
        line, column = self.getpos()
        self.found.append((self.lines[line - 1] + column, raw))


def tracked(
    html: str, command: DeliveryCommand, *, base: str, secret: str, opens: bool, clicks: bool, skip: str
) -> str:
    """`html` with its links rewritten and the open pixel added, as configured; `skip` is a URL prefix
    never rewritten (the unsubscribe link)."""
    if command.priority == "critical" or not (opens or clicks):
        return html
    base = base.rstrip("/")
    if clicks:
        parser = _Links(html)
        parser.feed(html)
        parser.close()
        for offset, raw in reversed(parser.found):
            href = first_href(raw)
            if href is None or html[offset : offset + len(raw)] != raw:
                continue
            start, end, url = href
            if url.startswith(skip) or not re.match(r"https?://", url, re.IGNORECASE):
                continue
            link = f"{base}/c/{tracking_token(command, secret, url)}"
            html = html[:offset] + f'{raw[:start]}"{link}"{raw[end:]}' + html[offset + len(raw) :]
    if opens:
        pixel = (
            f'<img src="{base}/o/{tracking_token(command, secret)}" width="1" height="1" alt="" '
            'style="display:block;border:0;width:1px;height:1px">'
        )
        ends = list(BODY_END.finditer(html))
        html = html[: ends[-1].start()] + pixel + html[ends[-1].start() :] if ends else html + pixel
    return html
