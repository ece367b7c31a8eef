import json
import shutil
from pathlib import Path

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
