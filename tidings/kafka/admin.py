"""Creates the registry's topics and reports drift; waits for a broker to answer."""

from __future__ import annotations

import logging
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewTopic,
)

from tidings.config import Settings
from tidings.errors import KafkaUnavailable
from tidings.kafka import config
from tidings.topics import OWNED_CONFIGS, TopicSpec

log = logging.getLogger(__name__)


@dataclass
class TopicReport:
    name: str
    action: str
    drift: list[str] = field(default_factory=list)
    altered: list[str] = field(default_factory=list)


def admin(settings: Settings) -> AdminClient:
    return AdminClient(config.base(settings))


def wait_until_ready(settings: Settings, timeout: float = 60.0) -> int:
    """Block until the cluster's metadata lists a broker; returns how many brokers it lists."""
    client = admin(settings)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            meta = client.list_topics(timeout=min(5.0, max(0.5, deadline - time.monotonic())))
            if meta.brokers:
                return len(meta.brokers)
        except KafkaException as exc:
            last = exc
        time.sleep(0.3)
    raise KafkaUnavailable(
        f"Kafka at {settings.kafka_bootstrap} did not answer within {timeout:.0f}s: {last}"
    )


def delete_topics(settings: Settings, prefix: str, *, timeout: float = 30.0) -> list[str]:
    """Delete every topic whose name starts with `prefix` (a test's or benchmark's namespace).

    A broker keeps files open for every partition; tests that each create a whole topology would
    otherwise pile up thousands of partitions and run it out of file descriptors."""
    if not prefix:
        raise ValueError("refusing to delete topics without a prefix")
    client = admin(settings)
    doomed = sorted(t for t in client.list_topics(timeout=timeout).topics if t.startswith(prefix))
    if doomed:
        futures = client.delete_topics(doomed, operation_timeout=timeout, request_timeout=timeout)
        for future in futures.values():
            try:
                future.result()
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise
    return doomed


def topics_starting(settings: Settings, prefix: str, *, timeout: float = 10.0) -> list[str]:
    """The names of the cluster's topics that start with `prefix` (none, with a warning, when the
    cluster does not answer in time)."""
    try:
        listed = admin(settings).list_topics(timeout=timeout).topics
    except KafkaException as exc:
        log.warning("could not list the topics starting with %s: %s", prefix, exc)
        return []
    return sorted(t for t in listed if t.startswith(prefix))


def topic_ids(client: AdminClient, topics: list[str], *, timeout: float = 10.0) -> dict[str, str]:
    """Each topic's id: the cluster names a topic created again with a new one, while its name and
    partitions stay the same. A topic the cluster does not describe in time is left out."""
    if not topics:
        return {}
    ids: dict[str, str] = {}
    for name, future in client.describe_topics(TopicCollection(topics), request_timeout=timeout).items():
        try:
            ids[name] = str(future.result(timeout).topic_id)
        except (KafkaException, FutureTimeout) as exc:
            log.warning("could not read the id of topic %s: %s", name, exc)
    return ids


def apply_topics(
    settings: Settings, specs: list[TopicSpec], *, timeout: float = 30.0, alter: bool = False
) -> list[TopicReport]:
    """Create missing topics; for existing ones compare partitions and config (idempotent). With
    `alter`, set a drifted config to the registry's (partitions are never changed: more partitions
    would move recipients' keys and break co-partitioning). A topic override of one of `OWNED_CONFIGS`
    that the registry no longer sets is drift too, and `alter` removes it."""
    client = admin(settings)
    existing = client.list_topics(timeout=timeout).topics
    reports: dict[str, TopicReport] = {}
    missing = [s for s in specs if s.name not in existing]
    if missing:
        futures = client.create_topics(
            [
                NewTopic(s.name, s.partition_count(settings), settings.replication_factor, config=s.config())
                for s in missing
            ],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        for name, fut in futures.items():
            try:
                fut.result()
                reports[name] = TopicReport(name, "created")
            except KafkaException as exc:
                if exc.args[0].code() != exc.args[0].TOPIC_ALREADY_EXISTS:
                    raise
                reports[name] = TopicReport(name, "exists")
    created = [name for name, r in reports.items() if r.action == "created"]
    if created:
        _wait_for_leaders(client, created, timeout)
    present = [s for s in specs if s.name in existing]
    if present:
        resources = [ConfigResource(ConfigResource.Type.TOPIC, s.name) for s in present]
        described = {r.name: f.result() for r, f in client.describe_configs(resources).items()}
        for spec in present:
            report = TopicReport(spec.name, "ok")
            partitions = len(existing[spec.name].partitions)
            if partitions != spec.partition_count(settings):
                report.drift.append(f"partitions {partitions} != {spec.partition_count(settings)}")
            have = {k: e.value for k, e in described[spec.name].items()}
            wanted = spec.config()
            wrong: dict[str, str | None] = {k: v for k, v in wanted.items() if have.get(k) != v}
            topic_level = ConfigSource.DYNAMIC_TOPIC_CONFIG.value
            overrides = {k for k, e in described[spec.name].items() if e.source == topic_level}
            wrong |= {k: None for k in sorted(OWNED_CONFIGS & overrides - set(wanted))}
            report.drift += [f"{k} {have.get(k)} != {v or '(default)'}" for k, v in wrong.items()]
            if wrong and alter:
                _alter(client, spec.name, wrong, timeout)
                report.action = "altered"
                report.altered = [d for d in report.drift if not d.startswith("partitions")]
                report.drift = [d for d in report.drift if d.startswith("partitions")]
            if report.drift:
                report.action = "drift"
            reports[spec.name] = report
    return [reports[s.name] for s in specs]


def _alter(client: AdminClient, topic: str, values: dict[str, str | None], timeout: float) -> None:
    """Set each config to its value, or back to the broker's default where the value is None."""
    entries = [
        ConfigEntry(
            k, v, incremental_operation=AlterConfigOpType.SET if v is not None else AlterConfigOpType.DELETE
        )
        for k, v in values.items()
    ]
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=entries)
    for future in client.incremental_alter_configs([resource], request_timeout=timeout).values():
        future.result()


def _wait_for_leaders(client: AdminClient, topics: list[str], timeout: float) -> None:
    """New topics are usable once every partition has a leader."""
    deadline = time.monotonic() + timeout
    while True:
        meta = client.list_topics(timeout=timeout).topics
        pending = [
            t
            for t in topics
            if t not in meta
            or meta[t].error is not None
            or any(p.leader < 0 or p.error is not None for p in meta[t].partitions.values())
        ]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise KafkaUnavailable(f"no partition leaders after {timeout:.0f}s for {pending[:3]}")
        time.sleep(0.1)


def group_lag(settings: Settings, group_id: str, topics: list[str], timeout: float = 30.0) -> int:
    """Records in `topics` not yet committed by the consumer group (read_committed end offsets).

    Retries while the group coordinator or partition leaders are still loading (a fresh cluster)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(config.consumer(settings, group_id))
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                lag = 0
                for topic in topics:
                    meta = consumer.list_topics(topic, timeout=10).topics[topic]
                    partitions = [TopicPartition(topic, p) for p in meta.partitions]
                    committed = {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=10)}
                    for tp in partitions:
                        _, high = consumer.get_watermark_offsets(tp, timeout=10)
                        lag += max(0, high - max(committed.get(tp.partition, 0), 0))
                return lag
            except KafkaException as exc:
                if time.monotonic() > deadline:
                    raise KafkaUnavailable(f"lag of {group_id} unknown: {exc}") from exc
                time.sleep(0.3)
    finally:
        consumer.close()
