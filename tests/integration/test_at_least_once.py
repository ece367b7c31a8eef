from collections.abc import Callable

from tests.integration.conftest import read_all
from tests.integration.test_transactional import produce, requests
from tidings.config import Settings
from tidings.errors import KafkaUnavailable
from tidings.events import NotificationRequested
from tidings.kafka import AtLeastOnceLoop, Incoming, Output
from tidings.kafka.records import header_map
from tidings.topics import DLQ


def test_handles_everything_once_dead_letters_poison_and_retries_transient_failures(
    stack: Settings, topic_factory: Callable[..., str], group_id: str
) -> None:
    source = topic_factory("in", partitions=2)
    good = requests(50)
    outputs = [Output.event(source, e) for e in good]
    outputs.insert(10, Output(source, b"acme/r3", b"not avro"))
    produce(stack, source, outputs)
    handled: list[NotificationRequested] = []
    failures = iter([True])

    def handle(record: Incoming) -> list[Output]:
        event = record.decode()
        assert isinstance(event, NotificationRequested)
        if event.notification_id == good[20].notification_id and next(failures, False):
            raise KafkaUnavailable("database briefly unreachable")
        handled.append(event)
        return []

    loop = AtLeastOnceLoop(stack, group_id=group_id, topics=[source], handle=handle, retry_backoff=0.2)
    loop.run(idle_exit_after=3)
    assert sorted(e.notification_id for e in handled) == sorted(e.notification_id for e in good)
    assert loop.dead_letters == 1
    letters = [r for r in read_all(stack, DLQ) if header_map(r.headers).get("tidings.source.topic") == source]
    assert [r.value for r in letters] == [b"not avro"]

    again: list[Incoming] = []
    second = AtLeastOnceLoop(
        stack, group_id=group_id, topics=[source], handle=lambda r: again.append(r) or []
    )
    second.run(idle_exit_after=3)
    assert again == [], "committed offsets must cover everything handled"


def test_a_record_whose_header_key_is_not_utf8_is_dead_lettered_and_the_rest_handled(
    stack: Settings, topic_factory: Callable[..., str], group_id: str
) -> None:
    """Its headers cannot be read (confluent-kafka's `headers()` crashed a warm call site)."""
    from tests.raw_headers import RAW_KEY, Raw, produce_raw

    source = topic_factory("in", partitions=1)
    good = requests(100)
    outputs = [Output.event(source, e) for e in good]
    produce_raw(stack, [Raw(out, RAW_KEY if i in (40, 70) else None) for i, out in enumerate(outputs)])
    handled: list[Incoming] = []
    loop = AtLeastOnceLoop(
        stack, group_id=group_id, topics=[source], handle=lambda r: handled.append(r) or []
    )
    loop.run(idle_exit_after=3)
    assert [r.value for r in handled] == [o.value for i, o in enumerate(outputs) if i not in (40, 70)]
    letters = [r for r in read_all(stack, DLQ) if header_map(r.headers).get("tidings.source.topic") == source]
    assert sorted(r.value for r in letters) == sorted([outputs[40].value, outputs[70].value]), (
        "the dead letters' partitions follow their keys, so their order across partitions varies"
    )
    assert {header_map(r.headers)["tidings.error.type"] for r in letters} == {"UnreadableHeaders"}
