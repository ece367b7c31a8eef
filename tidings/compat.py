"""Schema evolution gate: Apache `avro`'s compatibility checker over every kept version.

Events must be BACKWARD_TRANSITIVE (the newest reader reads every older writer). Commands must be FULL
in both directions against every older version (FULL_TRANSITIVE, stricter than FULL), because gateways
of two releases consume the same command topics during a rolling deploy. A lock file pins the fingerprint
of every released version, so a released schema can only be superseded, never edited in place.

The fingerprint is taken over the parsing canonical form, which leaves out `logicalType` and `default`
(and Apache avro's checker ignores logical types): `timestamp-millis` edited to `timestamp-micros` in a
released version kept its fingerprint, and every record written before was read a thousand times off
(2026 as 1970). So the lock also pins a digest of each version's whole text but its docs, and two
versions of a record may not share a fingerprint (the codec finds a writer's schema by it: the newer
would decode the older's records).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from tidings.schemas import SchemaSet, SchemaVersion

COMMAND_RECORDS = frozenset({"DeliveryCommand"})
LOCK_FILE = "released.lock.json"


@dataclass(frozen=True)
class Problem:
    record: str
    message: str

    def __str__(self) -> str:
        return f"{self.record}: {self.message}"


def _parse(sv: SchemaVersion) -> avro.schema.Schema:
    return avro.schema.parse(json.dumps(sv.raw))


def _incompatible(reader: SchemaVersion, writer: SchemaVersion) -> str | None:
    result = ReaderWriterCompatibilityChecker().get_compatibility(  # type: ignore[no-untyped-call]
        _parse(reader), _parse(writer)
    )
    if result.compatibility is SchemaCompatibilityType.compatible:
        return None
    where = ", ".join(sorted(result.locations))
    return (
        f"v{reader.version} cannot read v{writer.version} ({'; '.join(sorted(result.messages))} at {where})"
    )


def mode(record: str) -> str:
    return "FULL_TRANSITIVE" if record in COMMAND_RECORDS else "BACKWARD_TRANSITIVE"


def check_compatibility(schemas: SchemaSet) -> list[Problem]:
    problems: list[Problem] = []
    for name, versions in sorted(schemas.versions.items()):
        full = name in COMMAND_RECORDS
        for i, newer in enumerate(versions):
            for older in versions[:i]:
                if older.fingerprint == newer.fingerprint:
                    problems.append(
                        Problem(
                            name,
                            f"v{newer.version} has the fingerprint of v{older.version} "
                            f"({newer.fingerprint.hex()}): only a logical type, default or doc differs, "
                            f"and records of v{older.version} would be decoded as v{newer.version}",
                        )
                    )
                if msg := _incompatible(newer, older):
                    problems.append(Problem(name, f"BACKWARD: {msg}"))
                if full and (msg := _incompatible(older, newer)):
                    problems.append(Problem(name, f"FORWARD: {msg}"))
    return problems


def read_lock(directory: Path) -> dict[str, str]:
    path = directory / LOCK_FILE
    if not path.exists():
        return {}
    data: dict[str, str] = json.loads(path.read_text())
    return data


def pin(sv: SchemaVersion) -> str:
    """`<fingerprint> <digest>`: the digest covers the whole schema (logical types, defaults, aliases)
    but its docs, which decode nothing."""
    text = json.dumps(_undocumented(sv.raw), sort_keys=True, separators=(",", ":"))
    return f"{sv.fingerprint.hex()} {hashlib.sha256(text.encode()).hexdigest()[:32]}"


def _undocumented(node: object) -> object:
    if isinstance(node, dict):
        return {k: _undocumented(v) for k, v in node.items() if k != "doc"}
    if isinstance(node, list):
        return [_undocumented(v) for v in node]
    return node


def check_released(schemas: SchemaSet, directory: Path) -> list[Problem]:
    """Every released version still exists as it was released: its fingerprint, and its digest where
    the lock has one (pins written before digests hold the fingerprint alone)."""
    problems = []
    present = {f"{v.name}.v{v.version}": pin(v) for vs in schemas.versions.values() for v in vs}
    for label, pinned in sorted(read_lock(directory).items()):
        record = label.split(".v")[0]
        if label not in present:
            problems.append(Problem(record, f"released version {label} was deleted"))
        elif present[label] != pinned and present[label].split()[0] != pinned:
            problems.append(
                Problem(
                    record,
                    f"released version {label} was edited ({pinned} -> {present[label]}); "
                    "add a new version instead",
                )
            )
    return problems


def release(schemas: SchemaSet, directory: Path) -> list[str]:
    """Pin every version not yet in the lock file; returns the labels added."""
    lock = read_lock(directory)
    added = []
    for versions in schemas.versions.values():
        for v in versions:
            label = f"{v.name}.v{v.version}"
            if label not in lock:
                lock[label] = pin(v)
                added.append(label)
            elif lock[label] == v.fingerprint.hex():
                lock[label] = pin(v)
    (directory / LOCK_FILE).write_text(json.dumps(dict(sorted(lock.items())), indent=2) + "\n")
    return sorted(added)


def check(directory: Path) -> list[Problem]:
    schemas = SchemaSet.load(directory)
    return check_compatibility(schemas) + check_released(schemas, directory)
