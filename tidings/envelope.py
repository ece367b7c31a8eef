"""The base of every event model: the envelope fields, the Kafka key, and the registry by record name."""

from __future__ import annotations

from typing import Any, ClassVar
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field

from tidings.vocabulary import Millis, TenantId, utcnow


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_avro(self) -> dict[str, Any]:
        return self.model_dump()


class Event(Record):
    """The envelope every event carries; subclasses register themselves by class name."""

    registry: ClassVar[dict[str, type[Event]]] = {}

    event_id: UUID = Field(default_factory=uuid4)
    tenant_id: TenantId
    occurred_at: Millis = Field(default_factory=utcnow)
    correlation_id: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Event.registry[cls.__name__] = cls

    @property
    def key(self) -> str:
        """The Kafka key: `tenant/recipient` for per-recipient events."""
        recipient = getattr(self, "recipient_id", None)
        return f"{self.tenant_id}/{recipient}" if recipient else self.tenant_id
