from pathlib import Path

import pytest

from tidings.catalog import EscalationStep, digest_rule, escalation_steps, load, next_versions, parse_type
from tidings.errors import InvalidEvent

ROOT = Path(__file__).resolve().parents[2]


def test_the_example_catalog_is_valid() -> None:
    types = {t.notification_type: t for t in load(ROOT / "catalog")}
    assert {"order.shipped", "password.reset", "comment.mention"} <= set(types)
    reset = types["password.reset"]
    assert reset.critical and reset.priority == "critical" and reset.expires_after_seconds == 1800
    assert types["comment.mention"].escalation_json is not None


TEMPLATES = {"email": {"default": {"subject": "Hi {{ name }}", "body": "Hello"}}}


def base(**changes: object) -> dict[str, object]:
    raw: dict[str, object] = {"key": "t", "category": "c", "channels": ["email"], "templates": TEMPLATES}
    return raw | changes


@pytest.mark.parametrize(
    "raw,message",
    [
        (base(channels=["email", "fax"]), "fax"),
        (base(channels=["email", "sms"]), "without templates"),
        (base(templates={"email": {"de": {"subject": "x"}}}), "default"),
        (base(templates={"email": {"default": {"subject": "{{ oops ", "body": "b"}}}), "subject"),
        (
            base(
                templates={"email": {"default": {"subject": "Hi", "body": "b"}, "de": {"subject": "Hallo"}}}
            ),
            "de: needs body or html",
        ),
        (base(channels=["sms"], templates={"sms": {"default": {"title": "Hi"}}}), "sms/default: needs body"),
        (base(templates={"email": {"default": {"footer": "x"}}}), "unknown template fields"),
        (
            base(templates={"email": {"default": {"subject": "s", "body": 5}}}),
            r"fields \['body'\] must be str",
        ),
        (base(templates={"email": {"default": "body"}}), "templates.email.default must be a table of fields"),
        (base(templates={"email": "body"}), "templates.email must be a table of locales"),
        (base(priority="urgent"), "^t: priority: Input should be 'low', 'normal', 'high' or 'critical'$"),
        (base(colour="blue"), "unknown fields"),
        (base(expires_after="3w"), "^t: expires_after '3w' is not a duration like 10s"),
    ],
)
def test_invalid_types_are_refused_with_the_reason(raw: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        parse_type("acme", raw)


def test_versions_increase_only_on_change() -> None:
    first = next_versions([parse_type("acme", base())], {})
    assert [t.version for t in first] == [1]
    current = {t.key: t for t in first}
    assert next_versions([parse_type("acme", base())], current) == []
    changed = next_versions([parse_type("acme", base(category="other"))], current)
    assert [t.version for t in changed] == [2]


def test_duplicate_keys_across_files_are_refused(tmp_path: Path) -> None:
    text = '[[type]]\nkey = "a"\ncategory = "c"\nchannels = []\n'
    (tmp_path / "one.toml").write_text(text)
    (tmp_path / "two.toml").write_text(text)
    with pytest.raises(InvalidEvent, match="twice"):
        load(tmp_path)


def test_digest_and_escalation_rules_are_parsed() -> None:
    types = {t.notification_type: t for t in load(ROOT / "catalog")}
    rule = digest_rule(types["post.liked"])
    assert rule is not None and rule.window_seconds == 3600 and set(rule.templates) == {"email"}
    assert escalation_steps(types["comment.mention"]) == [EscalationStep(300, "email", "seen")]
    assert digest_rule(types["order.shipped"]) is None and escalation_steps(types["order.shipped"]) == []


DIGEST = {
    "window": "1h",
    "templates": {"email": {"default": {"subject": "{{ count }} updates", "body": "x"}}},
}


@pytest.mark.parametrize(
    "raw,message",
    [
        (base(digest={"window": "soon", "templates": DIGEST["templates"]}), "soon"),
        (base(digest={"window": "1h"}), "at least one channel"),
        (base(digest={**DIGEST, "templates": {"sms": {"default": {"body": "x"}}}}), "does not use"),
        (base(digest={**DIGEST, "templates": {"email": {"default": {"body": "{% for %}"}}}}), "body"),
        (base(digest={**DIGEST, "colour": "blue"}), "window and templates"),
        (base(escalation=[{"after": "5m", "channel": "sms"}]), "not one of the type's channels"),
        (base(escalation=[{"after": "5m", "channel": "email", "unless": "liked"}]), "liked"),
        (base(escalation=[{"after": "later", "channel": "email"}]), "later"),
        (base(escalation={"after": "5m"}), "list of steps"),
        (base(escalation=[{"after": "5m", "channel": "email"}] * 2), "only once"),
        (base(escalation=[{"after": "110000d", "channel": "email"}]), "at most 31 days"),
        (base(digest={**DIGEST, "window": "400d"}), "at most 31 days"),
        (base(digest=DIGEST, escalation=[{"after": "5m", "channel": "email"}]), "cannot escalate"),
        (
            base(
                channels=["in_app", "email"],
                templates={**TEMPLATES, "in_app": {"default": {"title": "Hi"}}},
                digest=DIGEST,
                escalation=[{"after": "5m", "channel": "in_app"}],
            ),
            "cannot escalate",
        ),
    ],
)
def test_invalid_digest_and_escalation_rules_are_refused(raw: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        parse_type("acme", raw)
