from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.cli.io import notification_id_arg, parse_data
from tidings.errors import InvalidEvent, KafkaUnavailable
from tidings.kafka import Incoming
from tidings.kafka.messages import first_offsets, next_offsets
from tidings.kafka.records import REQUESTED_AT, dead_letter, header_map, log_time, size_checked
from tidings.topics import DLQ
from tidings.tracing import child_traceparent, new_traceparent


def test_dead_letter_keeps_bytes_and_names_the_failure() -> None:
    record = Incoming(
        "notifications.requested", 3, 42, b"acme/u1", b"\x00garbage", [("traceparent", b"x")], 99
    )
    out = dead_letter(record, InvalidEvent("tenant_id: bad"), "router")
    assert out.topic == DLQ and out.key == b"acme/u1" and out.value == b"\x00garbage"
    headers = header_map(out.headers)
    assert headers["traceparent"] == "x"
    assert headers["tidings.error.type"] == "InvalidEvent"
    assert headers["tidings.error.message"] == "tenant_id: bad"
    assert headers["tidings.error.retriable"] == "false"
    assert (
        headers["tidings.source.topic"],
        headers["tidings.source.partition"],
        headers["tidings.source.offset"],
    ) == ("notifications.requested", "3", "42")
    assert headers["tidings.consumer.group"] == "router"
    assert (
        header_map(dead_letter(record, KafkaUnavailable("x"), "g").headers)["tidings.error.retriable"]
        == "true"
    )


def test_batch_offsets() -> None:
    batch = [Incoming("t", p, o, None, b"") for p, o in [(0, 5), (1, 7), (0, 6), (1, 8), (0, 7)]]
    assert {(tp.partition, tp.offset) for tp in next_offsets(batch)} == {(0, 8), (1, 9)}
    assert {(tp.partition, tp.offset) for tp in first_offsets(batch)} == {(0, 5), (1, 7)}


def test_traceparent() -> None:
    parent = new_traceparent()
    child = child_traceparent(parent.encode())
    assert child.split("-")[1] == parent.split("-")[1] and child != parent
    assert len(child_traceparent(b"garbage").split("-")) == 4


def test_cli_data_pairs() -> None:
    assert parse_data('{"a": 1}', ["b=two", "c:=3", "d:=[1,2]", "url=https://x?a=b"]) == {
        "a": 1,
        "b": "two",
        "c": 3,
        "d": [1, 2],
        "url": "https://x?a=b",
    }
    with pytest.raises(InvalidEvent):
        parse_data(None, ["novalue"])
    with pytest.raises(InvalidEvent):
        parse_data("[1]", [])
    with pytest.raises(InvalidEvent):
        parse_data(None, ["x:=not json"])


def test_log_time_is_the_record_timestamp_unless_a_header_says_when_the_request_was_made() -> None:
    plain = Incoming("t", 0, 1, None, b"", [], 1_700_000_000_123)
    assert log_time(plain) == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    stated = Incoming("t", 0, 1, None, b"", [(REQUESTED_AT, b"1600000000001")], 1_700_000_000_123)
    assert log_time(stated) == datetime(2020, 9, 13, 12, 26, 40, 1000, tzinfo=UTC)
    garbled = Incoming("t", 0, 1, None, b"", [(REQUESTED_AT, b"soon")], 1_700_000_000_123)
    assert log_time(garbled) == log_time(plain)
    assert log_time(Incoming("t", 0, 1, None, b"", [], 0)) is None


@given(
    header=st.one_of(
        st.none(),
        st.binary(max_size=30),
        st.integers(0, 10**30).map(lambda n: b"%d" % n),
        st.integers(4000, 6000).map(lambda n: b"9" * n),
    ),
    timestamp=st.integers(-(2**63), 2**63 - 1),
)
def test_log_time_of_any_header_and_timestamp_is_a_time_or_none_never_an_error(
    header: bytes | None, timestamp: int
) -> None:
    """A producer sets both: a header of year 10,000 (or a Unicode digit) crash-looped the recipients
    projection on an erasure, every restart."""
    headers = [] if header is None else [(REQUESTED_AT, header)]
    at = log_time(Incoming("t", 0, 1, None, b"", headers, timestamp))
    assert at is None or at.tzinfo is UTC
    if 0 < timestamp <= 253_402_300_799_999:
        assert at is not None


@pytest.mark.parametrize(
    "given",
    [
        "0190F3A2-7C1B-7E4D-9A2B-3C4D5E6F7A8B",
        "0190f3a27c1b7e4d9a2b3c4d5e6f7a8b",
        "urn:uuid:0190f3a2-7c1b-7e4d-9a2b-3c4d5e6f7a8b",
    ],
)
def test_a_notification_id_argument_is_read_in_canonical_form(given: str) -> None:
    """`tidings audit` compares the id with the events' ids as text: found nothing for these."""
    assert notification_id_arg(given) == "0190f3a2-7c1b-7e4d-9a2b-3c4d5e6f7a8b"


def test_a_dead_letter_too_large_to_produce_leaves_the_value_out_and_says_where_it_is() -> None:
    """Copied whole with the error headers, a record near the size limit failed `produce()`, and the
    consumer stopped on it at every restart."""
    record = Incoming("notifications.requested", 1, 7, b"acme/u1", b"x" * 1_044_000, [("h", b"y" * 5000)], 99)
    out = dead_letter(record, InvalidEvent("bad"), "router")
    headers = header_map(out.headers)
    assert out.value is None and "h" not in headers and out.key == b"acme/u1"
    assert (headers["tidings.dlq.value_left_out"], headers["tidings.replayable"]) == ("true", "false")
    assert (headers["tidings.source.topic"], headers["tidings.source.offset"]) == (
        "notifications.requested",
        "7",
    )
    assert size_checked([out]) == [out]
    small = dead_letter(Incoming("t", 0, 1, b"k", b"v" * 1_040_000, [], 99), InvalidEvent("bad"), "g")
    assert small.value == b"v" * 1_040_000, "a letter the broker takes keeps the record whole"


def test_a_dead_letter_copied_whole_fits_the_producers_request_size_however_many_headers() -> None:
    """Counted by their bytes alone, 600 empty headers kept a letter under `MAX_LETTER_BYTES` and took
    it past aiokafka's 1 MiB request size by their length prefixes: the gateway stopped at every start."""
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    cases = ((1_046_900, 600, False), (1_030_000, 600, True), (1_040_000, 0, True), (10, 5_000, True))
    for value_bytes, header_count, whole in cases:
        headers = [(f"h{i}" if header_count == 5_000 else "", b"") for i in range(header_count)]
        record = Incoming("notifications.delivery.email", 0, 3, b"k", b"x" * value_bytes, headers, 99)
        out = dead_letter(record, InvalidEvent("bad"), "gateway")
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(out.key, out.value, out.headers)
        assert size <= 1_048_576, (value_bytes, header_count, size)
        assert (out.value is not None) == whole, (value_bytes, header_count)
