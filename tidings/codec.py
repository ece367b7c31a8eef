"""Avro single-object encoding: `C3 01` + CRC-64-AVRO fingerprint (little-endian) + Avro binary body.

Java's `BinaryMessageEncoder` and goavro write the same bytes, so any service can produce without a
registry. A reader finds the writer schema by fingerprint among every version in `schemas/` and resolves
it to the current version of the same record.
"""

from __future__ import annotations

import io
from typing import Any

from fastavro import schemaless_reader, schemaless_writer
from pydantic import ValidationError

from tidings.errors import BadMagic, CorruptRecord, InvalidEvent, TruncatedRecord, UnknownFingerprint, summary
from tidings.events import Event
from tidings.schemas import SchemaSet, SchemaVersion, default_schemas
from tidings.vocabulary import DECODED

MAGIC = b"\xc3\x01"
HEADER_SIZE = 10


class Codec:
    def __init__(self, schemas: SchemaSet | None = None) -> None:
        self.schemas = schemas or default_schemas()
        self._by_fp = self.schemas.by_fingerprint()

    def encode_record(self, name: str, record: dict[str, Any]) -> bytes:
        sv = self.schemas.current(name)
        buf = io.BytesIO()
        buf.write(sv.header)
        try:
            schemaless_writer(buf, sv.parsed, record)
        except UnicodeEncodeError as exc:
            raise InvalidEvent(
                f"{name}: text that is not Unicode ({exc.reason}: a lone surrogate, e.g. from a \\ud800 "
                "escape in JSON) cannot be written as UTF-8"
            ) from None
        return buf.getvalue()

    def encode(self, event: Event) -> bytes:
        return self.encode_record(type(event).__name__, event.to_avro())

    def writer_of(self, data: bytes) -> SchemaVersion:
        if len(data) < HEADER_SIZE:
            if data[:2] != MAGIC[: len(data[:2])]:
                raise BadMagic("not Avro single-object encoding (expected C3 01)")
            raise TruncatedRecord(f"{len(data)} bytes is shorter than the 10-byte header")
        if data[:2] != MAGIC:
            raise BadMagic(f"not Avro single-object encoding: starts with {data[:2].hex()}, expected c301")
        sv = self._by_fp.get(data[2:HEADER_SIZE])
        if sv is None:
            raise UnknownFingerprint(f"writer schema fingerprint {data[2:HEADER_SIZE].hex()} is unknown")
        return sv

    def decode_record(self, data: bytes) -> tuple[str, dict[str, Any]]:
        writer = self.writer_of(data)
        reader = self.schemas.current(writer.name)
        body = io.BytesIO(data[HEADER_SIZE:])
        try:
            record = schemaless_reader(body, writer.parsed, None if reader is writer else reader.parsed)
        except (EOFError, StopIteration) as exc:
            raise TruncatedRecord(f"{writer.name} body ends early") from exc
        except (ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError, OverflowError) as exc:
            raise CorruptRecord(f"{writer.name} body does not match its schema: {exc}") from exc
        if body.tell() != len(data) - HEADER_SIZE:
            raise CorruptRecord(
                f"{writer.name} body has {len(data) - HEADER_SIZE - body.tell()} trailing bytes"
            )
        if not isinstance(record, dict):
            raise CorruptRecord(f"{writer.name} did not decode to a record")
        return writer.name, record

    def decode(self, data: bytes) -> Event:
        name, record = self.decode_record(data)
        model = Event.registry.get(name)
        if model is None:
            raise UnknownFingerprint(f"record {name} has no event model")
        try:
            return model.model_validate(record, context=DECODED)
        except ValidationError as exc:
            raise InvalidEvent(f"{name}: {summary(exc)}") from exc


_default: Codec | None = None


def default_codec() -> Codec:
    global _default
    if _default is None:
        _default = Codec()
    return _default
