"""SMS segment counting against a reference encoder: the text is encoded for real (GSM 03.38 septet codes
from the standard's table, or UTF-16 code units) and cut into 153-septet / 67-unit segments, backing off
one unit wherever a cut would separate an escape from its character or a surrogate pair. Plus the
boundaries (160/161, 70/71, escapes and emoji straddling a segment edge) and the pre-send checks."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateways.base import DeliveryRejected
from gateways.sms._segments import Encoding, Segments, checked_text, segments
from tidings.events import DeliveryCommand, RenderedContent

ESC = 0x1B
GSM_TABLE = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
GSM_EXTENSION = {0x0A: "\f", 0x14: "^", 0x28: "{", 0x29: "}", 0x2F: "\\", 0x3C: "[", 0x3D: "~", 0x3E: "]"}
GSM_EXTENSION |= {0x40: "|", 0x65: "€"}
BASIC = {c: code for code, c in enumerate(GSM_TABLE) if code != ESC}
EXTENDED = {c: code for code, c in GSM_EXTENSION.items()}
OTHERS = "çЖж中\u2019`¢ā\u200b\x1b"
ASTRAL = "😀🎉𝄞👍🏽"


def gsm_septets(text: str) -> list[int] | None:
    septets: list[int] = []
    for c in text:
        if c in BASIC:
            septets.append(BASIC[c])
        elif c in EXTENDED:
            septets += [ESC, EXTENDED[c]]
        else:
            return None
    return septets


def is_escape(septet: int) -> bool:
    return septet == ESC


def is_high_surrogate(unit: int) -> bool:
    return 0xD800 <= unit <= 0xDBFF


def reference(text: str) -> Segments:
    septets = gsm_septets(text)
    encoding: Encoding
    unsplittable: Callable[[int], bool]
    if septets is not None:
        encoding, units, single, each, unsplittable = "GSM-7", septets, 160, 153, is_escape
    else:
        raw = text.encode("utf-16-be")
        units = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
        encoding, single, each, unsplittable = "UCS-2", 70, 67, is_high_surrogate
    if len(units) <= single:
        return Segments(encoding, len(units), 1)
    count, rest = 0, units
    while rest:
        cut = min(each, len(rest))
        if cut < len(rest) and unsplittable(rest[cut - 1]):
            cut -= 1
        rest, count = rest[cut:], count + 1
    return Segments(encoding, len(units), count)


def test_reference_table_is_the_whole_gsm_alphabet() -> None:
    assert len(GSM_TABLE) == 128 and len(set(GSM_TABLE)) == 128
    assert len(BASIC) + len(EXTENDED) == 137


gsm_text = st.text(alphabet=st.sampled_from(sorted(BASIC)), max_size=800)
gsm_extended_text = st.text(alphabet=st.sampled_from(sorted(BASIC) + sorted(EXTENDED) * 8), max_size=800)
mixed_text = st.text(
    alphabet=st.sampled_from(sorted(BASIC) + sorted(EXTENDED) + list(OTHERS + ASTRAL)), max_size=400
)
astral_text = st.text(alphabet=st.sampled_from(list("жa" + ASTRAL)), max_size=400)
pair_near_an_edge = st.builds(
    lambda n, pair, m: "a" * n + pair + "a" * m,
    st.integers(150, 153),
    st.sampled_from(["€", "^", "\f"]),
    st.integers(150, 156),
) | st.builds(lambda n, m: "ж" * n + "😀" + "ж" * m, st.integers(64, 67), st.integers(64, 70))


@given(st.one_of(gsm_text, gsm_extended_text, mixed_text, astral_text, st.text(max_size=400)))
def test_count_matches_the_reference_encoder(text: str) -> None:
    assert segments(text) == reference(text)


@given(pair_near_an_edge)
def test_pairs_near_a_segment_edge_match_the_reference_encoder(text: str) -> None:
    assert segments(text) == reference(text)


@given(
    st.text(alphabet=st.sampled_from(sorted(BASIC)), min_size=1, max_size=300),
    st.sampled_from(OTHERS + ASTRAL),
)
def test_one_character_outside_gsm_makes_the_whole_text_ucs2(text: str, other: str) -> None:
    found = segments(text + other)
    assert found.encoding == "UCS-2"
    assert found.units == len(text) + (2 if ord(other) > 0xFFFF else 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", Segments("GSM-7", 0, 1)),
        ("a" * 160, Segments("GSM-7", 160, 1)),
        ("a" * 161, Segments("GSM-7", 161, 2)),
        ("a" * 306, Segments("GSM-7", 306, 2)),
        ("a" * 307, Segments("GSM-7", 307, 3)),
        ("€" * 80, Segments("GSM-7", 160, 1)),
        ("a" * 159 + "€", Segments("GSM-7", 161, 2)),
        ("ж" * 70, Segments("UCS-2", 70, 1)),
        ("ж" * 71, Segments("UCS-2", 71, 2)),
        ("ж" * 134, Segments("UCS-2", 134, 2)),
        ("😀" * 35, Segments("UCS-2", 70, 1)),
        ("😀" * 35 + "a", Segments("UCS-2", 71, 2)),
        ("ç" * 70, Segments("UCS-2", 70, 1)),
        ("Ç" * 160, Segments("GSM-7", 160, 1)),
        ("`" + "a" * 69, Segments("UCS-2", 70, 1)),
        ("\f" * 80, Segments("GSM-7", 160, 1)),
    ],
    ids=lambda value: f"{value[:1]!r}x{len(value)}" if isinstance(value, str) else "",
)
def test_boundaries(text: str, expected: Segments) -> None:
    assert segments(text) == expected


def test_an_escape_pair_never_straddles_a_segment_edge() -> None:
    assert segments("a" * 152 + "€" + "a" * 152) == Segments("GSM-7", 306, 3)
    assert segments("a" * 153 + "€" + "a" * 151) == Segments("GSM-7", 306, 2)


def test_a_surrogate_pair_never_straddles_a_segment_edge() -> None:
    assert segments("ж" * 66 + "😀" + "ж" * 66) == Segments("UCS-2", 134, 3)
    assert segments("ж" * 67 + "😀" + "ж" * 65) == Segments("UCS-2", 134, 2)


def sms(body: str | None, address: str = "+447700900123") -> DeliveryCommand:
    return DeliveryCommand(
        tenant_id="acme",
        delivery_id=uuid.uuid4(),
        notification_id=uuid.uuid4(),
        recipient_id="u",
        notification_type="auth.code",
        channel="sms",
        priority="high",
        address=address,
        content=RenderedContent(body=body),
    )


def test_checked_text_passes_a_text_within_the_limit() -> None:
    assert checked_text(sms("a" * 306), 2) == ("a" * 306, Segments("GSM-7", 306, 2))


@pytest.mark.parametrize(
    ("command", "limit", "reason"),
    [
        (sms("a" * 307), 2, "3 segments (GSM-7, 307 units), more than max_segments 2"),
        (sms("ж" * 71), 1, "2 segments (UCS-2, 71 units), more than max_segments 1"),
        (sms(None), 10, "no body"),
        (sms(""), 10, "no body"),
        (sms("hi", address="07700 900123"), 10, "not an E.164"),
        (sms("hi", address="447700900123"), 10, "not an E.164"),
    ],
)
def test_checked_text_refuses_permanently(command: DeliveryCommand, limit: int, reason: str) -> None:
    with pytest.raises(DeliveryRejected) as refused:
        checked_text(command, limit)
    assert refused.value.permanent and not refused.value.address_dead
    assert reason in refused.value.reason
