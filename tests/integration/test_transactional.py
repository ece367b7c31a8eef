import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from confluent_kafka import KafkaException, Producer

from tests.integration.conftest import read_all
from tidings.codec import default_codec
from tidings.config import Settings
from tidings.errors import HangingTransaction, InvalidEvent, KafkaUnavailable
from tidings.events import DeliveryOutcome, NotificationRequested
from tidings.ids import new_notification_id
from tidings.kafka import EventProducer, Incoming, Output, TransactionalLoop
from tidings.kafka import config as kafka_config
from tidings.kafka.consumer import read_partition
from tidings.kafka.records import header_map
from tidings.topics import DLQ, names

ROOT = Path(__file__).resolve().parents[2]


def requests(n: int, recipients: int = 20) -> list[NotificationRequested]:
    return [
        NotificationRequested(
            tenant_id="acme",
            notification_id=new_notification_id(),
            recipient_id=f"r{i % recipients}",
            notification_type="t",
        )
        for i in range(n)
    ]


def produce(s: Settings, topic: str, outputs: Iterable[Output]) -> None:
    with EventProducer(s) as producer:
        for out in outputs:
            producer.produce(out)


def outcome_handler(target: str) -> Callable[[Incoming], list[Output]]:
    def handle(record: Incoming) -> list[Output]:
        event = record.decode()
        assert isinstance(event, NotificationRequested)
        outcome = DeliveryOutcome(
            tenant_id=event.tenant_id, notification_id=event.notification_id, status="QUEUED"
        )
        return [Output.event(target, outcome)]

    return handle


def ids_in(s: Settings, topic: str) -> Counter[uuid.UUID]:
    counts: Counter[uuid.UUID] = Counter()
    for record in read_all(s, topic):
        event = default_codec().decode(record.value or b"")
        assert isinstance(event, DeliveryOutcome)
        counts[event.notification_id] += 1
    return counts


def test_an_output_too_large_for_the_broker_dead_letters_its_record_and_the_loop_goes_on(
    stack: Settings, topic_factory: Callable[..., str], group_id: str
) -> None:
    """produce() refused it after the handler returned, outside the record's poison handling: the loop
    stopped, and stopped again on the same record at every restart."""
    source, target = topic_factory("in"), topic_factory("out")
    good = requests(6)
    big = good[2].notification_id
    produce(stack, source, [Output.event(source, e) for e in good])
    handle = outcome_handler(target)

    def bloated(record: Incoming) -> list[Output]:
        [out] = handle(record)
        event = record.decode()
        assert isinstance(event, NotificationRequested)
        if event.notification_id == big:
            return [Output(out.topic, out.key, b"x" * 2_100_000, out.headers)]
        return [out]

    loop = TransactionalLoop(
        stack, group_id=group_id, topics=[source], handle=bloated, transactional_id=f"{group_id}-0"
    )
    loop.run(idle_exit_after=3)

    assert ids_in(stack, target) == Counter({e.notification_id: 1 for e in good if e.notification_id != big})
    [letter] = [
        header_map(r.headers)
        for r in read_all(stack, DLQ)
        if header_map(r.headers).get("tidings.source.topic") == source
    ]
    assert letter["tidings.error.type"] == "InvalidEvent" and "2100" in letter["tidings.error.message"]


def test_poison_records_are_dead_lettered_and_valid_ones_flow(
    stack: Settings, topic_factory: Callable[..., str], group_id: str
) -> None:
    source, target = topic_factory("in"), topic_factory("out")
    good = requests(30)
    invalid = default_codec().encode_record("NotificationRequested", good[0].to_avro() | {"tenant_id": "a/b"})
    poison = [b"garbage bytes", b"\xc3\x01" + b"\x00" * 8 + b"x", invalid, b""]
    outputs = [Output.event(source, e) for e in good]
    for i, blob in enumerate(poison):
        outputs.insert(i * 7 + 1, Output(source, b"acme/r1", blob, [("traceparent", b"t")]))
    produce(stack, source, outputs)
    seen_poison: list[str] = []

    def on_poison(record: Incoming, exc: BaseException) -> list[Output]:
        seen_poison.append(type(exc).__name__)
        if isinstance(exc, InvalidEvent):
            raise RuntimeError("a handler's own poison hook failing must not stop the loop")
        return []

    loop = TransactionalLoop(
        stack,
        group_id=group_id,
        topics=[source],
        handle=outcome_handler(target),
        transactional_id=f"{group_id}-0",
        on_poison=on_poison,
    )
    loop.run(idle_exit_after=3)

    assert ids_in(stack, target) == Counter({e.notification_id: 1 for e in good})
    letters = [
        header_map(r.headers) | {"value": r.value}
        for r in read_all(stack, DLQ)
        if header_map(r.headers).get("tidings.source.topic") == source
    ]
    assert sorted(x["value"] or b"" for x in letters) == sorted(poison)
    assert {x["tidings.error.type"] for x in letters} == {
        "BadMagic",
        "UnknownFingerprint",
        "InvalidEvent",
        "TruncatedRecord",
    }
    assert all(x["tidings.consumer.group"] == group_id and x["traceparent"] == "t" for x in letters)
    assert sorted(seen_poison) == sorted(x["tidings.error.type"] for x in letters)
    assert loop.dead_letters == 4


def test_retriable_failure_aborts_and_retries_without_duplicates(
    stack: Settings, topic_factory: Callable[..., str], group_id: str
) -> None:
    source, target = topic_factory("in", partitions=1), topic_factory("out")
    good = requests(40)
    produce(stack, source, [Output.event(source, e) for e in good])
    inner = outcome_handler(target)
    failures = iter([True, True])

    def flaky(record: Incoming) -> list[Output]:
        outputs = inner(record)
        if record.offset == 25 and next(failures, False):
            raise KafkaUnavailable("downstream not reachable")
        return outputs

    loop = TransactionalLoop(
        stack,
        group_id=group_id,
        topics=[source],
        handle=flaky,
        transactional_id=f"{group_id}-0",
        batch_size=100,
    )
    loop.run(idle_exit_after=4)
    assert loop.aborted_batches == 2
    assert ids_in(stack, target) == Counter({e.notification_id: 1 for e in good})


def test_kill_9_mid_stream_loses_and_duplicates_nothing(
    stack: Settings, topic_factory: Callable[..., str], group_id: str
) -> None:
    source, target = topic_factory("in"), topic_factory("out")
    good = requests(3000, recipients=200)
    produce(stack, source, [Output.event(source, e) for e in good])
    cmd = [
        sys.executable,
        "-m",
        "tests.integration.apps.copy_loop",
        source,
        target,
        group_id,
        f"{group_id}-0",
        "0.002",
    ]
    kills = 0
    for _ in range(3):
        with subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, env=os.environ.copy()
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith("committed") and int(line.split()[1]) >= 5:
                    break
            time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        kills += proc.returncode == -signal.SIGKILL
    final = subprocess.run([*cmd, "4"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]
    assert kills == 3
    counts = ids_in(stack, target)
    missing = {e.notification_id for e in good} - set(counts)
    duplicated = {k: v for k, v in counts.items() if v > 1}
    assert not missing and not duplicated, (len(missing), len(duplicated))
    uncommitted = read_all(stack, target, committed=False)
    assert len(uncommitted) > len(good), "no kill landed inside a transaction"


def test_a_restore_waits_for_open_transactions_and_refuses_to_stop_short_of_a_hanging_one(
    topology: Settings,
) -> None:
    s = topology
    topic = names(s).changelog("router", "seen")
    writer = Producer(kafka_config.producer(s, **{"transactional.id": f"hang-{uuid.uuid4()}"}))
    writer.init_transactions(30)

    def write(*keys: str) -> None:
        writer.begin_transaction()
        for key in keys:
            writer.produce(topic, key=key, value=b"v", partition=0)
        writer.flush(10)

    def keys() -> list[str]:
        return [(r.key or b"").decode() for r in read_partition(s, topic, 0, settle=20)]

    write("k1", "k2")
    writer.commit_transaction(30)
    write("k3", "k4", "k5")
    started = time.monotonic()
    with pytest.raises(HangingTransaction, match=r"offsets 3 to 5 stayed behind an open transaction"):
        list(read_partition(s, topic, 0, settle=2))
    assert time.monotonic() - started >= 2
    threading.Timer(1.0, lambda: writer.commit_transaction(30)).start()
    assert keys() == ["k1", "k2", "k3", "k4", "k5"], "waited for the commit instead of stopping before it"
    write("k6")
    threading.Timer(1.0, lambda: writer.abort_transaction(30)).start()
    assert keys() == ["k1", "k2", "k3", "k4", "k5"]


@pytest.mark.parametrize("consumed", [10, 0])
def test_a_zombies_punctuation_is_fenced_by_the_group(
    stack: Settings, topic_factory: Callable[..., str], group_id: str, consumed: int
) -> None:
    """A process whose group membership passed to another (here: a static member replaced under the
    same group.instance.id, as after a long pause) must not commit a punctuation: it carries the
    group's metadata like a batch does, and the coordinator refuses the old member. Also when the
    zombie never committed a batch (fenced with the offsets it found on assignment)."""
    source, target = topic_factory("in"), topic_factory("out")
    produce(stack, source, [Output.event(source, e) for e in requests(consumed)])
    late: list[Output] = []
    member = {"group.instance.id": f"{group_id}-slot"}

    def loop(name: str) -> TransactionalLoop:
        return TransactionalLoop(
            stack,
            group_id=group_id,
            topics=[source],
            handle=outcome_handler(target),
            transactional_id=f"{group_id}-{name}",
            consumer_overrides=member,
            punctuate=lambda: list(late),
            punctuate_every=3600,
        )

    zombie = loop("zombie")
    try:
        zombie._start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
            zombie.committed_records < consumed or not zombie.consumer.assignment()
        ):
            zombie._step(time.monotonic())
        assert zombie.committed_records == consumed and zombie.consumer.assignment()
        loop("successor").run(idle_exit_after=2)
        late.append(Output(target, b"acme/r0", b"from the zombie"))
        try:
            zombie._punctuate()
        except KafkaException as exc:
            print("the zombie's punctuation failed:", exc)
    finally:
        zombie.consumer.close()
    values = [r.value for r in read_all(stack, target)]
    assert len(values) == consumed and b"from the zombie" not in values
