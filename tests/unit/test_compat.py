import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tidings.cli import app
from tidings.compat import check, check_released, release
from tidings.schemas import SchemaSet, default_schema_dir


@pytest.fixture
def schema_dir(tmp_path: Path) -> Path:
    shutil.copytree(default_schema_dir(), tmp_path, dirs_exist_ok=True)
    return tmp_path


def add_version(
    directory: Path, name: str, change: dict[str, object] | None = None, drop: str | None = None
) -> None:
    versions = sorted(directory.glob(f"{name}.v*.avsc"))
    latest = json.loads(versions[-1].read_text())
    fields = [f for f in latest["fields"] if f["name"] != drop]
    if change:
        fields.append(change)
    (directory / f"{name}.v{len(versions) + 1}.avsc").write_text(json.dumps({**latest, "fields": fields}))


def test_the_shipped_schemas_pass() -> None:
    assert check(default_schema_dir()) == []


def test_adding_an_optional_field_passes(schema_dir: Path) -> None:
    add_version(
        schema_dir, "NotificationRequested", {"name": "campaign", "type": ["null", "string"], "default": None}
    )
    add_version(schema_dir, "DeliveryCommand", {"name": "hint", "type": "string", "default": ""})
    assert check(schema_dir) == []


def test_adding_a_required_field_breaks_backward(schema_dir: Path) -> None:
    add_version(schema_dir, "NotificationRequested", {"name": "campaign", "type": "string"})
    problems = check(schema_dir)
    assert {p.record for p in problems} == {"NotificationRequested"}
    assert all("BACKWARD" in str(p) and "campaign" in str(p) for p in problems)


def test_transitive_break_against_an_older_version_is_caught(schema_dir: Path) -> None:
    add_version(schema_dir, "DeviceRemoved", drop="reason")
    add_version(schema_dir, "DeviceRemoved", {"name": "reason", "type": "int", "default": 0})
    problems = check(schema_dir)
    assert problems and all(p.record == "DeviceRemoved" for p in problems)
    assert any("v3 cannot read v1" in str(p) for p in problems)


def test_commands_must_also_be_forward_compatible(schema_dir: Path) -> None:
    add_version(schema_dir, "DeliveryCommand", drop="address")
    problems = check(schema_dir)
    assert any("FORWARD" in str(p) and p.record == "DeliveryCommand" for p in problems)
    add_version(schema_dir, "DeviceRemoved", drop="device_id")
    assert not any(p.record == "DeviceRemoved" for p in check(schema_dir))


def test_editing_a_released_version_is_refused(schema_dir: Path) -> None:
    path = schema_dir / "DeviceRemoved.v1.avsc"
    raw = json.loads(path.read_text())
    raw["fields"].append({"name": "x", "type": ["null", "string"], "default": None})
    path.write_text(json.dumps(raw))
    problems = check_released(SchemaSet.load(schema_dir), schema_dir)
    assert [p.record for p in problems] == ["DeviceRemoved"] and "edited" in str(problems[0])


def test_release_pins_new_versions(schema_dir: Path) -> None:
    add_version(schema_dir, "DeviceRemoved", {"name": "x", "type": ["null", "string"], "default": None})
    assert release(SchemaSet.load(schema_dir), schema_dir) == ["DeviceRemoved.v2"]
    assert release(SchemaSet.load(schema_dir), schema_dir) == []


def test_cli_exit_codes(schema_dir: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["schemas", "check", "--dir", str(schema_dir)])
    assert ok.exit_code == 0, ok.output
    add_version(schema_dir, "NotificationRequested", {"name": "campaign", "type": "string"})
    broken = runner.invoke(app, ["schemas", "check", "--dir", str(schema_dir)])
    assert broken.exit_code == 1
    assert "NotificationRequested" in broken.output


def _retyped(raw: dict[str, Any], field: str, logical: str) -> dict[str, Any]:
    fields = [
        {**f, "type": {**f["type"], "logicalType": logical}} if f["name"] == field else f
        for f in raw["fields"]
    ]
    return {**raw, "fields": fields}


def test_a_logical_type_edited_in_a_released_version_is_refused(schema_dir: Path) -> None:
    """The fingerprint leaves logical types out: millis edited to micros passed, and every record
    written before decoded a thousand times off."""
    path = schema_dir / "DeliveryCommand.v3.avsc"
    raw = json.loads(path.read_text())
    assert any(f["name"] == "occurred_at" for f in raw["fields"])
    path.write_text(json.dumps(_retyped(raw, "occurred_at", "timestamp-micros")))
    problems = check(schema_dir)
    assert [p.record for p in problems] == ["DeliveryCommand"] and "DeliveryCommand.v3 was edited" in str(
        problems[0]
    )


def test_a_doc_edited_in_a_released_version_passes(schema_dir: Path) -> None:
    path = schema_dir / "DeviceRemoved.v1.avsc"
    raw = json.loads(path.read_text())
    path.write_text(json.dumps({**raw, "doc": "A device was removed; says more now."}))
    assert check(schema_dir) == []


def test_a_new_version_that_differs_only_in_a_logical_type_is_refused(schema_dir: Path) -> None:
    raw = json.loads((schema_dir / "DeliveryCommand.v3.avsc").read_text())
    (schema_dir / "DeliveryCommand.v4.avsc").write_text(
        json.dumps(_retyped(raw, "occurred_at", "timestamp-micros"))
    )
    problems = check(schema_dir)
    assert any("v4 has the fingerprint of v3" in str(p) for p in problems), problems


def test_pins_of_fingerprints_alone_still_hold_and_release_adds_the_digest(schema_dir: Path) -> None:
    lock = schema_dir / "released.lock.json"
    old = {label: pinned.split()[0] for label, pinned in json.loads(lock.read_text()).items()}
    lock.write_text(json.dumps(old))
    assert check(schema_dir) == []
    assert release(SchemaSet.load(schema_dir), schema_dir) == []
    assert all(len(p.split()) == 2 for p in json.loads(lock.read_text()).values())
