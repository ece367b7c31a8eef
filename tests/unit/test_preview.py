import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from processors.plan import Catalog, plan
from processors.recipients import RecipientState
from tidings.catalog import load, parse_type
from tidings.cli import app
from tidings.errors import InvalidEvent
from tidings.events import NotificationRequested
from tidings.ids import new_notification_id
from tidings.preview import Example, check, condition, load_checked, preview

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
TYPE = """
[[type]]
key = "order.shipped"
category = "orders"
channels = ["email", "push"]
{extra}
[type.channel_conditions]
push = "express"

[type.templates.email.default]
subject = "Order {{{{ order }}}}"
html = "<p>Hi {{{{ recipient.name or 'there' }}}}, <b>{{{{ order }}}}</b></p>"

[type.templates.email.de]
subject = "Bestellung {{{{ order }}}} mit {{{{ carrier }}}}"
body = "Unterwegs"

[type.templates.push.default]
title = "Order"
data_json = '{{"order": {{{{ order|tojson }}}}}}'

[type.digest]
window = "1h"

[type.digest.templates.email.default]
subject = "{{{{ count }}}} orders: {{% for o in items %}}{{{{ o.order }}}} {{% endfor %}}"
body = "{{{{ count }}}} orders"
"""


def write(tmp_path: Path, example: str, extra: str = "") -> Path:
    path = tmp_path / "types.toml"
    path.write_text(TYPE.format(extra=extra) + example)
    return path


def test_publish_renders_every_template_of_the_example_catalog() -> None:
    types, rendered, unchecked = load_checked(ROOT / "catalog", "*")
    catalog = Catalog()
    expected = 0
    for t in types:
        catalog.apply(t)
        digest = catalog.rules(t).digest
        expected += len(t.templates) + sum(len(v) for v in (digest.templates if digest else {}).values())
    assert unchecked == [] and rendered == expected and rendered > len(types)


def test_an_example_missing_a_variable_of_one_locale_stops_the_catalog(tmp_path: Path) -> None:
    path = write(tmp_path, '[type.example]\norder = "A-1"\n')
    with pytest.raises(InvalidEvent, match=r"email: subject: .*'carrier' is undefined \(locale de\)"):
        load_checked(path, "*")
    [t] = load(path)
    assert check(t, Example({"order": "A-1", "carrier": "DHL"}, {})) == 4


def test_digest_templates_are_rendered_with_the_example_as_items(tmp_path: Path) -> None:
    [t] = load(write(tmp_path, ""))
    [digest] = preview(t, Example({"order": "A-1"}, {}), digest=True)
    assert digest.digest and digest.fields["subject"] == "2 orders: A-1 A-1 "
    broken = TYPE.replace("o.order", "o.missing.deeper")
    path = tmp_path / "broken.toml"
    path.write_text(broken.format(extra="") + '[type.example]\norder = "A-1"\ncarrier = "D"\n')
    with pytest.raises(InvalidEvent, match=r"email: subject: .*\(locale digest default\)"):
        load_checked(path, "*")


def test_a_data_json_that_is_not_an_object_is_found_at_publish(tmp_path: Path) -> None:
    path = write(tmp_path, '[type.example]\norder = "A-1"\ncarrier = "D"\n')
    path.write_text(path.read_text().replace("""'{"order": {{ order|tojson }}}'""", "'[{{ order|tojson }}]'"))
    with pytest.raises(InvalidEvent, match="push: data_json: rendered text is not a JSON object"):
        load_checked(path, "*")


def test_a_template_printing_the_name_an_example_recipient_lacks_is_found_at_publish(tmp_path: Path) -> None:
    path = write(tmp_path, '[type.example]\norder = "A-1"\ncarrier = "D"\n')
    path.write_text(path.read_text().replace("recipient.name or 'there'", "recipient.name"))
    with pytest.raises(InvalidEvent, match="email: html: UndefinedError: a value printed is null"):
        load_checked(path, "*")


def test_bad_example_tables_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidEvent, match="unknown fields"):
        load_checked(write(tmp_path, '[type.example_recipient]\nemail = "a@b.c"\n'), "*")
    with pytest.raises(InvalidEvent, match="must be tables"):
        load_checked(write(tmp_path, "", extra='example = "A-1"'), "*")


def test_preview_matches_what_the_router_plans(tmp_path: Path) -> None:
    [t] = load(write(tmp_path, ""))
    catalog = Catalog()
    catalog.apply(t)
    data: dict[str, Any] = {"order": "A-<1>", "carrier": "DHL", "express": True}
    state = RecipientState(email="ada@example.com", name="Ada & Co", locale="de-AT", digest={"orders": "off"})
    request = NotificationRequested(
        tenant_id="acme",
        notification_id=new_notification_id(),
        recipient_id="ada",
        notification_type="order.shipped",
        data_json=json.dumps(data),
        occurred_at=NOW,
    )
    [command] = [c for c in plan(request, state, catalog, NOW).commands if c.channel == "email"]
    [email] = preview(t, Example(data, {"name": "Ada & Co", "locale": "de-AT"}), channels=["email"])
    assert email.locale == "de" and email.fields["subject"] == "Bestellung A-<1> mit DHL"
    assert email.fields == {k: getattr(command.content, k) for k in email.fields}
    [default] = preview(t, Example(data, {"name": "Ada & Co"}), channels=["email"])
    assert (
        default.locale == "default" and default.fields["html"] == "<p>Hi Ada &amp; Co, <b>A-&lt;1&gt;</b></p>"
    )


def test_conditions_are_reported_not_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path, '[type.example]\norder = "A-1"\ncarrier = "D"\n', extra="condition = \"order != 'A-1'\""
    )
    [t] = load(path)
    example = Example({"order": "A-1", "carrier": "D"}, {})
    assert condition(t, example) == "condition not met: order != 'A-1'"
    assert [(r.channel, r.unmet) for r in preview(t, example)] == [
        ("email", None),
        ("push", "condition not met: express"),
    ]
    assert load_checked(path, "*")[1] == 4
    with pytest.raises(InvalidEvent, match="no templates for \\['sms'\\]"):
        preview(t, example, channels=["sms"])
    assert (
        parse_type(
            "*", {"key": "x", "category": "c", "example": {}, "example_recipient": {}}
        ).notification_type
        == "x"
    )


def test_the_cli_previews_with_the_example_overridden_by_the_data_given(tmp_path: Path) -> None:
    path = write(tmp_path, '[type.example]\norder = "A-1"\ncarrier = "DHL"\n')
    result = CliRunner().invoke(
        app, ["catalog", "preview", str(path), "order.shipped", "order=B-2", "--json"]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(x["channel"], x.get("subject") or x.get("data_json")) for x in lines] == [
        ("email", "Order B-2"),
        ("push", '{"order": "B-2"}'),
    ]
    german = CliRunner().invoke(
        app, ["catalog", "preview", str(path), "order.shipped", "--locale", "de", "--data", "{}"]
    )
    assert german.exit_code == 0 and "Bestellung A-1 mit DHL" in german.stdout
    unknown = CliRunner().invoke(app, ["catalog", "preview", str(path), "nope"])
    assert isinstance(unknown.exception, InvalidEvent) and "order.shipped" in str(unknown.exception)
