"""The Avro contract: every `.avsc` version under `schemas/`, indexed by name and by fingerprint.

Files are named `<Record>.v<N>.avsc`; every released version stays, and the highest N is the reader schema.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast

from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

from tidings.errors import ConfigError

_FILE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\.v(?P<version>\d+)\.avsc$")


def default_schema_dir() -> Path:
    packaged = Path(__file__).parent / "_schemas"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "schemas"


@dataclass(frozen=True)
class SchemaVersion:
    name: str
    version: int
    path: Path
    raw: dict[str, Any]
    parsed: dict[str, Any]
    canonical: str
    fingerprint: bytes

    @property
    def header(self) -> bytes:
        return b"\xc3\x01" + self.fingerprint


def load_version(path: Path) -> SchemaVersion:
    match = _FILE.match(path.name)
    if not match:
        raise ConfigError(f"{path}: schema files are named <Record>.v<N>.avsc")
    raw = json.loads(path.read_text())
    if raw.get("name") != match["name"]:
        raise ConfigError(f"{path}: record name {raw.get('name')!r} differs from the file name")
    parsed = cast(dict[str, Any], parse_schema(raw))
    canonical = to_parsing_canonical_form(raw)
    fp = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
    return SchemaVersion(match["name"], int(match["version"]), path, raw, parsed, canonical, fp)


@dataclass(frozen=True)
class SchemaSet:
    """All versions of all records in one directory."""

    versions: dict[str, list[SchemaVersion]]

    @classmethod
    def load(cls, directory: Path | None = None) -> SchemaSet:
        directory = directory or default_schema_dir()
        versions: dict[str, list[SchemaVersion]] = {}
        for path in sorted(directory.glob("*.avsc")):
            sv = load_version(path)
            versions.setdefault(sv.name, []).append(sv)
        if not versions:
            raise ConfigError(f"no .avsc files in {directory}")
        for name, items in versions.items():
            items.sort(key=lambda v: v.version)
            numbers = [v.version for v in items]
            if numbers != list(range(1, len(items) + 1)):
                raise ConfigError(f"{name}: versions must be 1..N without gaps, found {numbers}")
        return cls(versions)

    def current(self, name: str) -> SchemaVersion:
        return self.versions[name][-1]

    def by_fingerprint(self) -> dict[bytes, SchemaVersion]:
        return {v.fingerprint: v for items in self.versions.values() for v in items}


@cache
def default_schemas() -> SchemaSet:
    return SchemaSet.load()
