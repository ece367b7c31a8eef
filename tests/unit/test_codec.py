import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
from fastavro import schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.strategies import event_dicts
from tidings.codec import Codec, default_codec
from tidings.errors import (
    BadMagic,
    CodecError,
    CorruptRecord,
    InvalidEvent,
    TruncatedRecord,
    UnknownFingerprint,
)
from tidings.events import Event, NotificationRequested
from tidings.ids import new_notification_id
from tidings.schemas import SchemaSet, default_schema_dir, default_schemas

RECORDS = sorted(Event.registry)


def request() -> NotificationRequested:
    nid = new_notification_id()
    return NotificationRequested(
        tenant_id="acme",
        notification_id=nid,
        recipient_id="u-1",
        notification_type="order.shipped",
        data_json='{"order":"A-1"}',
    )


def test_every_schema_has_a_model_and_back() -> None:
    assert set(default_schemas().versions) == set(Event.registry)


@pytest.mark.parametrize("name", RECORDS)
@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_record_round_trips_through_its_schema(name: str, data: st.DataObject) -> None:
    model = Event.registry[name]
    event = model.model_validate(data.draw(event_dicts(name, model)))
    encoded = default_codec().encode(event)
    assert encoded[:2] == b"\xc3\x01"
    assert encoded[2:10] == default_schemas().current(name).fingerprint
    assert default_codec().decode(encoded) == event


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_codec_or_validation_errors(blob: bytes) -> None:
    with contextlib.suppress(CodecError, InvalidEvent):
        default_codec().decode(blob)


@settings(max_examples=200)
@given(st.binary(max_size=120))
def test_valid_header_with_random_body_never_escapes_typed_errors(body: bytes) -> None:
    header = default_schemas().current("NotificationRequested").header
    with contextlib.suppress(CodecError, InvalidEvent):
        default_codec().decode(header + body)


def test_bad_magic() -> None:
    with pytest.raises(BadMagic):
        default_codec().decode(b"\x00\x00\x00\x00\x01hello world")
    with pytest.raises(BadMagic):
        default_codec().decode(b"{}")


def test_unknown_fingerprint() -> None:
    with pytest.raises(UnknownFingerprint, match="0102030405060708"):
        default_codec().decode(b"\xc3\x01\x01\x02\x03\x04\x05\x06\x07\x08\x00")


def test_truncated_header_and_body() -> None:
    encoded = default_codec().encode(request())
    with pytest.raises(TruncatedRecord):
        default_codec().decode(encoded[:6])
    with pytest.raises(TruncatedRecord):
        default_codec().decode(encoded[:-3])


def test_trailing_bytes_are_corrupt() -> None:
    with pytest.raises(CorruptRecord, match="trailing"):
        default_codec().decode(default_codec().encode(request()) + b"\x00")


def test_valid_avro_with_invalid_content_is_an_invalid_event() -> None:
    record = request().to_avro() | {"tenant_id": "a/b"}
    with pytest.raises(InvalidEvent, match="tenant_id"):
        default_codec().decode(default_codec().encode_record("NotificationRequested", record))


def test_old_writer_resolves_to_the_new_reader(tmp_path: Path) -> None:
    shutil.copytree(default_schema_dir(), tmp_path, dirs_exist_ok=True)
    v1 = json.loads((tmp_path / "NotificationCancelled.v1.avsc").read_text())
    v2 = {
        **v1,
        "fields": [*v1["fields"], {"name": "cancelled_by", "type": ["null", "string"], "default": None}],
    }
    (tmp_path / "NotificationCancelled.v2.avsc").write_text(json.dumps(v2))
    schemas = SchemaSet.load(tmp_path)
    codec = Codec(schemas)
    old = schemas.versions["NotificationCancelled"][0]
    body = io.BytesIO()
    schemaless_writer(
        body,
        old.parsed,
        {
            "event_id": str(new_notification_id()),
            "tenant_id": "t",
            "occurred_at": 0,
            "correlation_id": None,
            "notification_id": str(new_notification_id()),
            "recipient_id": "r",
            "reason": "x",
        },
    )
    name, record = codec.decode_record(old.header + body.getvalue())
    assert name == "NotificationCancelled"
    assert record["cancelled_by"] is None and record["reason"] == "x"
