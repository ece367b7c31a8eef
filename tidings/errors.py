"""The error tree of tidings. Every error says whether trying again can help.

* TidingsError
  + ConfigError                 bad settings; fix and restart
  + CodecError                  bytes that are not a record we know (poison: dead-letter them)
    - BadMagic
    - UnknownFingerprint
    - TruncatedRecord
    - CorruptRecord
    - UnreadableHeaders
  + InvalidEvent                a decoded record that breaks a rule (poison: dead-letter it)
  + SchemaCompatibilityError    a schema change would break readers or writers
  + UnknownTopic                a topic asked for by name is not in the cluster
  + KafkaUnavailable            the broker did not answer in time (retriable)
  + OffsetsPastEnd              stored offsets beyond a partition's end (topic recreated): rebuild
  + TopicRecreated              stored offsets count a topic since deleted and created again: rebuild
  + DevStackError               the local stack could not be installed or started
"""

from __future__ import annotations

from uuid import UUID

from pydantic import ValidationError


class TidingsError(Exception):
    """Root of every error tidings raises on purpose."""

    retriable: bool = False
    notification_id: UUID | None = None
    broadcast_id: UUID | None = None
    """Set by `Client.send` on a send that failed: the id to retry the request with."""


class ConfigError(TidingsError):
    pass


class CodecError(TidingsError):
    """The bytes cannot be decoded into a known record; retrying cannot help."""


class BadMagic(CodecError):
    pass


class UnknownFingerprint(CodecError):
    pass


class TruncatedRecord(CodecError):
    pass


class CorruptRecord(CodecError):
    pass


class UnreadableHeaders(CodecError):
    """A header key is not UTF-8. Kafka's header keys are strings, but a producer that writes bytes
    (sarama, franz-go) can put anything there, and neither Python client reads such a record."""


class InvalidEvent(TidingsError):
    """A record decoded but its content is not acceptable (missing or malformed fields)."""


class UnreadableState(InvalidEvent):
    """A processor's stored value this release cannot decode (a newer release wrote it, before a
    rollback): a record that needs it is dead-lettered; the rest of the state is used as usual."""


class SchemaCompatibilityError(TidingsError):
    pass


class UnknownTopic(TidingsError):
    pass


class KafkaUnavailable(TidingsError):
    retriable = True


class OffsetsPastEnd(TidingsError):
    """Offsets stored outside Kafka point past a partition's end: the topic was deleted and created
    again (or restored from elsewhere), and what they count no longer exists."""


class TopicRecreated(TidingsError):
    """Offsets stored outside Kafka count records of a topic that has since been deleted and created
    again under the same name (its id changed): they would skip the new topic's first records."""


class HangingTransaction(TidingsError):
    """Records of a partition stay behind a transaction that neither commits nor aborts."""


class DevStackError(TidingsError):
    pass


def summary(exc: ValidationError) -> str:
    """A validation error in one line: each failing field and why (the first five)."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
