"""Schema evolution gate: Apache `avro`'s compatibility checker over every kept version.

Events must be BACKWARD_TRANSITIVE (the newest reader reads every older writer). Commands must be FULL
in both directions against every older version (FULL_TRANSITIVE, stricter than FULL), because gateways
of two releases consume the same command topics during a rolling deploy. A lock file pins the fingerprint
of every released version, so a released schema can only be superseded, never edited in place.
"""

from __future__ import annotations

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


def check_released(schemas: SchemaSet, directory: Path) -> list[Problem]:
    """Every released version still exists with the fingerprint it was released with."""
    problems = []
    present = {f"{v.name}.v{v.version}": v.fingerprint.hex() for vs in schemas.versions.values() for v in vs}
    for label, fp in sorted(read_lock(directory).items()):
        record = label.split(".v")[0]
        if label not in present:
            problems.append(Problem(record, f"released version {label} was deleted"))
        elif present[label] != fp:
            problems.append(
                Problem(
                    record,
                    f"released version {label} was edited (fingerprint {fp} -> "
                    f"{present[label]}); add a new version instead",
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
                lock[label] = v.fingerprint.hex()
                added.append(label)
    (directory / LOCK_FILE).write_text(json.dumps(dict(sorted(lock.items())), indent=2) + "\n")
    return sorted(added)


def check(directory: Path) -> list[Problem]:
    schemas = SchemaSet.load(directory)
    return check_compatibility(schemas) + check_released(schemas, directory)
