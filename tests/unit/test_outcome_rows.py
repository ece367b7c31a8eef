"""The projection's fast outcome decoder against the model path: same rows, same errors, for valid,
odd and damaged records (it may only ever accept what `Codec.decode` accepts, and identically)."""

from __future__ import annotations

import io
import uuid
from typing import Any

from fastavro import schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projections.outcome_rows import OutcomeDecoder, row_of
from tidings.codec import default_codec
from tidings.errors import CodecError, InvalidEvent

CODEC = default_codec()
DECODER = OutcomeDecoder(CODEC)
TEXT = st.sampled_from(["acme", "u1", "", "x/y", "a\x01b", "a\nb", "é", "A" * 256, "A" * 257, "\x7f", " "])


@st.composite
def uuids(draw: st.DrawFn) -> str:
    u = str(draw(st.uuids()))
    return draw(
        st.sampled_from(
            [u, u, u, u.upper(), u.replace("-", ""), "{" + u + "}", "urn:uuid:" + u, u[:-1], "zz"]
        )
    )


RECORDS = st.fixed_dictionaries(
    {
        "event_id": uuids(),
        "tenant_id": st.one_of(st.just("acme"), TEXT),
        "occurred_at": st.one_of(
            st.integers(0, 2**41), st.sampled_from([-1, 253402300799999, 253402300800000, -62135596800001])
        ),
        "correlation_id": st.one_of(st.none(), TEXT),
        "notification_id": uuids(),
        "delivery_id": st.one_of(st.none(), uuids()),
        "recipient_id": st.one_of(st.none(), TEXT),
        "channel": st.sampled_from([None, "email", "push", "sms", "in_app", "webhook", "fax", "", "EMAIL"]),
        "status": st.sampled_from(["QUEUED", "SENT", "DELIVERED", "FAILED", "BOGUS", "", "queued"]),
        "reason": st.one_of(st.none(), TEXT),
        "provider": st.one_of(st.none(), TEXT),
        "provider_message_id": st.one_of(st.none(), TEXT),
        "attempt": st.sampled_from([0, 1, 2, -1, 2**31 - 1, -(2**31)]),
        "template_version": st.sampled_from([None, 0, -5, 7]),
        "detail": st.one_of(st.none(), TEXT),
    }
)


def encoded(record: dict[str, Any]) -> bytes:
    assert DECODER.header is not None, "the fast path is switched off: review projections/outcome_rows.py"
    buffer = io.BytesIO()
    buffer.write(DECODER.header)
    schemaless_writer(buffer, DECODER.schema, record)
    return buffer.getvalue()


def model_path(data: bytes) -> tuple[Any, BaseException | None]:
    try:
        return row_of(CODEC.decode(data)), None
    except (CodecError, InvalidEvent) as exc:
        return None, exc


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    RECORDS,
    st.sampled_from(["whole", "truncated", "extra", "flipped"]),
    st.integers(0, 10**6),
    st.integers(0, 255),
)
def test_fast_decoding_equals_the_model_path(record: dict[str, Any], damage: str, at: int, byte: int) -> None:
    data = encoded(record)
    if damage == "truncated":
        data = data[: at % len(data)]
    elif damage == "extra":
        data += b"\x00"
    elif damage == "flipped":
        flipped = bytearray(data)
        flipped[10 + at % (len(data) - 10)] = byte
        data = bytes(flipped)
    expected, error = model_path(data)
    try:
        got, got_error = DECODER.decode(data), None
    except (CodecError, InvalidEvent) as exc:
        got, got_error = None, exc
    assert got == expected
    assert (type(got_error), str(got_error)) == (type(error), str(error))
    fast = DECODER.fast(data)
    assert fast is None or fast == expected


def test_a_canonical_outcome_takes_the_fast_path() -> None:
    ids = {k: str(uuid.uuid4()) for k in ("event_id", "notification_id", "delivery_id")}
    record = {
        **ids,
        "tenant_id": "acme",
        "occurred_at": 1_795_626_447_502,
        "correlation_id": None,
        "recipient_id": "ann",
        "channel": "email",
        "status": "SENT",
        "reason": None,
        "provider": "smtp",
        "provider_message_id": "<m@x>",
        "attempt": 1,
        "template_version": 3,
        "detail": None,
    }
    data = encoded(record)
    assert DECODER.fast(data) is not None and DECODER.fast(data) == model_path(data)[0]
