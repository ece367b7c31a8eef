"""What an SMS costs and whether it may be sent: segment counting and the checks every SMS provider makes
before calling its vendor.

`segments(text)` picks the encoding a handset would receive: GSM-7 (GSM 03.38 default alphabet, one
septet per character; the extension table `^{}\\[~]|€` and form feed take two, an escape and the
character) when every character is in those tables, else UCS-2 (counted in UTF-16 code units, so an emoji
outside the Basic Multilingual Plane takes two). One segment holds 160 septets or 70 units; a longer text
is sent concatenated, and the user data header leaves 153 septets or 67 units per segment. A segment
never ends between an escape and its character or between the halves of a surrogate pair (the handset
could not decode either half), so a two-unit character that does not fit moves whole to the next one.

`checked_text(command, max_segments)` refuses, permanently and before any request, a command without
text, an address that is not E.164, and a text longer than `max_segments`: vendors split long texts and
bill each segment, so a template that renders a novel is a bug to surface, not a bill to pay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import TypeAdapter, ValidationError

from gateways.base import DeliveryRejected
from tidings.events import DeliveryCommand, PhoneNumber

Encoding = Literal["GSM-7", "UCS-2"]

GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXTENSION = frozenset("\f^{}\\[~]|€")
SINGLE = {"GSM-7": 160, "UCS-2": 70}
CONCATENATED = {"GSM-7": 153, "UCS-2": 67}
E164 = TypeAdapter(PhoneNumber)


@dataclass(frozen=True)
class Segments:
    encoding: Encoding
    units: int
    count: int


def _costs(text: str) -> tuple[Encoding, list[int]]:
    if all(c in GSM_BASIC or c in GSM_EXTENSION for c in text):
        return "GSM-7", [2 if c in GSM_EXTENSION else 1 for c in text]
    return "UCS-2", [2 if ord(c) > 0xFFFF else 1 for c in text]


def segments(text: str) -> Segments:
    """An empty text is one (empty) segment, as vendors bill it."""
    encoding, costs = _costs(text)
    units = sum(costs)
    if units <= SINGLE[encoding]:
        return Segments(encoding, units, 1)
    size, count, used = CONCATENATED[encoding], 1, 0
    for cost in costs:
        if used + cost > size:
            count, used = count + 1, 0
        used += cost
    return Segments(encoding, units, count)


def checked_text(command: DeliveryCommand, max_segments: int) -> tuple[str, Segments]:
    """The text to send and its segments, or a permanent DeliveryRejected saying why it must not be sent."""
    text = command.content.body
    if not text:
        raise DeliveryRejected("sms command has no body text")
    try:
        E164.validate_python(command.address)
    except ValidationError:
        raise DeliveryRejected(f"sms address is not an E.164 phone number: {command.address!r}") from None
    parts = segments(text)
    if parts.count > max_segments:
        raise DeliveryRejected(
            f"sms text needs {parts.count} segments ({parts.encoding}, {parts.units} units), "
            f"more than max_segments {max_segments}"
        )
    return text, parts
