"""The Kafka runtime: the only package in tidings that imports a Kafka client.

Everything else sees client-neutral records (`Incoming`, `Output`) and plain functions.
"""

from aiokafka.errors import KafkaError as AsyncKafkaError
from confluent_kafka import KafkaException

from tidings.kafka.admin import TopicReport, apply_topics, delete_topics, group_lag, wait_until_ready
from tidings.kafka.consumer import (
    AtLeastOnceLoop,
    TopicFollower,
    end_offsets,
    log_ordered,
    read_partition,
    read_topic,
)
from tidings.kafka.producer import EventProducer
from tidings.kafka.records import Handler, Incoming, Output, PoisonHandler
from tidings.kafka.stored import StoredOffsetsLoop
from tidings.kafka.transactional import TransactionalLoop, TransactionalState
from tidings.kafka.txn import default_slot

CLIENT_ERRORS: tuple[type[Exception], ...] = (KafkaException, AsyncKafkaError)
"""What the Kafka clients raise of their own (a broker not reachable, a topic missing), for callers that
report it rather than print a traceback (the CLI)."""

__all__ = [
    "CLIENT_ERRORS",
    "AtLeastOnceLoop",
    "EventProducer",
    "Handler",
    "Incoming",
    "Output",
    "PoisonHandler",
    "StoredOffsetsLoop",
    "TopicFollower",
    "TopicReport",
    "TransactionalLoop",
    "TransactionalState",
    "apply_topics",
    "default_slot",
    "delete_topics",
    "end_offsets",
    "group_lag",
    "log_ordered",
    "read_partition",
    "read_topic",
    "wait_until_ready",
]
