import json
import os
import subprocess
import sys
from pathlib import Path

from tests.integration.test_projections import project
from tests.integration.test_router import ROOT, publish_catalog, run_router
from tidings.client import Client
from tidings.config import Settings
from tidings.events import DeliveryOutcome
from tidings.kafka import EventProducer, Output
from tidings.topics import names

TIDINGS = str(Path(sys.executable).with_name("tidings"))


def run(*args: str, timeout: float = 120, s: Settings | None = None) -> subprocess.CompletedProcess[str]:
    """`tidings ARGS`; with `s`, inside that test's own topic namespace."""
    env = os.environ.copy()
    if s is not None:
        env |= {
            "TIDINGS_TOPIC_PREFIX": s.topic_prefix,
            "TIDINGS_PARTITIONS": str(s.partitions),
            "TIDINGS_POSTGRES_DSN": s.postgres_dsn,
        }
    return subprocess.run([TIDINGS, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_send_then_tail_shows_the_request_decoded(topology: Settings) -> None:
    s = topology
    sent = run(
        "send",
        "--tenant",
        "acme",
        "--recipient",
        "cli-user",
        "--type",
        "order.shipped",
        "order=A-7",
        "items:=3",
        "--json",
        s=s,
    )
    assert sent.returncode == 0, sent.stderr
    nid = json.loads(sent.stdout)["notification_id"]
    tail = run("tail", f"{s.topic_prefix}notifications.requested", "--from-beginning", "--timeout", "5")
    assert tail.returncode == 0, tail.stderr
    lines = [json.loads(line) for line in tail.stdout.splitlines()]
    [mine] = [line for line in lines if line["value"] and line["value"]["notification_id"] == nid]
    assert mine["record"] == "NotificationRequested" and mine["key"] == "acme/cli-user"
    assert json.loads(mine["value"]["data_json"]) == {"order": "A-7", "items": 3}

    first = run("tail", f"{s.topic_prefix}notifications.requested", "--from-beginning", "--max", "1")
    assert first.returncode == 0 and len(first.stdout.splitlines()) == 1


def test_send_rejects_bad_input_with_a_clear_error(stack: Settings) -> None:
    bad = run("send", "--tenant", "acme/x", "--recipient", "u", "--type", "t")
    assert bad.returncode == 1 and "tenant_id" in bad.stderr


def test_tail_shows_undecodable_records_instead_of_crashing(topology: Settings) -> None:
    from tidings.kafka import EventProducer, Output

    dlq = f"{topology.topic_prefix}notifications.dlq"
    with EventProducer(topology) as producer:
        producer.produce(Output(dlq, b"k", b"\x01\x02 not avro"))
    tail = run("tail", dlq, "--from-beginning", "--timeout", "4")
    assert tail.returncode == 0
    assert any(json.loads(line).get("error", "").startswith("BadMagic") for line in tail.stdout.splitlines())


def test_reading_a_topic_that_does_not_exist_or_a_bad_filter_is_one_clear_error(stack: Settings) -> None:
    for args in (["tail", "no.such.topic", "--timeout", "1"], ["replay", "no.such.topic"]):
        missing = run(*args)
        assert missing.returncode == 1 and "no topic 'no.such.topic'" in missing.stderr, missing.stderr
        assert "Traceback" not in missing.stderr
    bad = run("replay", "notifications.requested", "--filter", "bogus")
    assert bad.returncode == 2 and "a filter is field=value" in bad.stderr


def test_dev_status_and_env(stack: Settings) -> None:
    status = run("dev", "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("running") == 3
    env = run("dev", "env")
    assert f"export TIDINGS_KAFKA_BOOTSTRAP={stack.kafka_bootstrap}" in env.stdout
    assert "export TIDINGS_POSTGRES_DSN=" in env.stdout and "export TIDINGS_REDIS_URL=" in env.stdout
    schemas = run("schemas", "check")
    assert schemas.returncode == 0 and "compatible" in schemas.stdout


def test_send_later_then_cancel(topology: Settings) -> None:
    s = topology
    sent = run(
        "send", "-t", "acme", "-r", "cli-later", "--type", "order.shipped", "--in", "10m", "--json", s=s
    )
    assert sent.returncode == 0, sent.stderr
    nid = json.loads(sent.stdout)["notification_id"]
    cancelled = run("cancel", nid, "-t", "acme", "-r", "cli-later", "--reason", "changed my mind", s=s)
    assert cancelled.returncode == 0, cancelled.stderr
    tail = run("tail", f"{s.topic_prefix}notifications.requested", "--from-beginning", "--timeout", "5")
    mine = [json.loads(line) for line in tail.stdout.splitlines() if nid in line]
    assert [m["record"] for m in mine] == ["NotificationRequested", "NotificationCancelled"]
    assert mine[0]["value"]["scheduled_at"] is not None
    assert mine[1]["value"]["reason"] == "changed my mind"


def test_send_and_cancel_refuse_unclear_times_and_ids(stack: Settings) -> None:
    naive = run("send", "-t", "acme", "-r", "u", "--type", "order.shipped", "--at", "2030-01-01T09:00")
    assert naive.returncode == 1 and "no time zone" in naive.stderr
    both = run("send", "-t", "acme", "-r", "u", "--type", "t", "--at", "2030-01-01T09:00Z", "--in", "1h")
    assert both.returncode == 1 and "not both" in both.stderr
    assert "not like" in run("send", "-t", "acme", "-r", "u", "--type", "t", "--in", "soon").stderr
    bad_id = run("cancel", "nope", "-t", "acme", "-r", "u")
    assert bad_id.returncode == 2 and "not a notification id" in " ".join(bad_id.stderr.split())


def test_status_says_why_a_notification_was_rejected_and_audit_shows_the_detail(database: Settings) -> None:
    s = database
    publish_catalog(s)
    with Client(s) as client:
        nid = client.send(tenant="acme", recipient="cli-status", type="order.shipped", data={"order": "A-1"})
    run_router(s)
    project(s, "delivery_status")
    shown = run("status", str(nid), s=s)
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    assert f"{nid} acme/cli-status order.shipped REJECTED" in text
    assert "REJECTED invalid:" in text and "'carrier' is undefined" in text
    audit = run("audit", str(nid), s=s)
    assert "'carrier'" in audit.stdout, audit.stdout
    for command in ("status", "audit"):
        bad = run(command, "not-a-uuid", s=s)
        assert bad.returncode == 2 and "not a notification id" in " ".join(bad.stderr.split())
    with EventProducer(s) as producer:  # another tenant naming the same id: a row of its own
        cancelled = DeliveryOutcome(tenant_id="globex", notification_id=nid, status="CANCELLED")
        producer.produce(Output.event(names(s).outcomes, cancelled))
    project(s, "delivery_status")
    both = run("status", str(nid), s=s)
    assert both.returncode == 2 and "tenants acme, globex each have" in " ".join(both.stderr.split())
    mine = run("status", str(nid), "--tenant", "acme", s=s)
    assert mine.returncode == 0 and "REJECTED invalid:" in " ".join(mine.stdout.split())


def test_recipients_set_refuses_what_the_router_could_not_use(topology: Settings) -> None:
    s = topology
    base = ("recipients", "set", "-t", "acme", "-r", "cli-checked")
    for args, says in [
        (("--timezone", "Mars/Base"), "not an IANA time zone"),
        (("--locale", "not a locale"), "not a locale"),
        (("--phone", "12345"), "+ and the country code"),
        (("--quiet-hours", "22:00-07:00", "--timezone", "Europe/Wien"), "not an IANA time zone"),
        ((), "nothing to set"),
    ]:
        refused = run(*base, *args, s=s)
        assert refused.returncode in (1, 2) and says in " ".join(refused.stderr.split()), (
            args,
            refused.stderr,
        )
        assert "Traceback" not in refused.stderr
    accepted = run("recipients", "set", "-t", "acme", "-r", "cli-accepted", "--locale", "de-AT", s=s)
    assert accepted.returncode == 0, accepted.stderr
    tail = run("tail", f"{s.topic_prefix}notifications.recipients", "--from-beginning", "--timeout", "5")
    assert tail.returncode == 0, tail.stderr
    recipients = {(json.loads(line)["value"] or {}).get("recipient_id") for line in tail.stdout.splitlines()}
    assert "cli-accepted" in recipients and "cli-checked" not in recipients, recipients


def test_recipients_set_digest_choice_and_refuse_unknown_ones(topology: Settings) -> None:
    s = topology
    ok = run("recipients", "set", "-t", "acme", "-r", "cli-digest", "--digest", "social=daily", s=s)
    assert ok.returncode == 0, ok.stderr
    tail = run("tail", f"{s.topic_prefix}notifications.recipients", "--from-beginning", "--timeout", "5")
    values = [json.loads(line)["value"] for line in tail.stdout.splitlines()]
    assert any(
        v and v.get("recipient_id") == "cli-digest" and v.get("digest") == {"social": "daily"} for v in values
    )
    bad = run("recipients", "set", "-t", "acme", "-r", "cli-digest", "--digest", "social=monthly")
    assert bad.returncode == 1 and "digest.social" in bad.stderr and "weekly" in bad.stderr


def test_audience_add_remove_broadcast_and_cancel(topology: Settings, tmp_path: Path) -> None:
    s = topology
    listed = tmp_path / "members.txt"
    listed.write_text("m1\n\nm2\n")
    assert run("audience", "add", "beta", "m0", "--from-file", str(listed), "-t", "acme", s=s).returncode == 0
    assert run("audience", "remove", "beta", "m1", "-t", "acme", s=s).returncode == 0
    sent = run(
        "audience",
        "broadcast",
        "beta",
        "-t",
        "acme",
        "--type",
        "product.announcement",
        "title=Hi",
        "--json",
        s=s,
    )
    assert sent.returncode == 0, sent.stderr
    bid = json.loads(sent.stdout)["broadcast_id"]
    assert run("audience", "cancel", "beta", bid, "-t", "acme", "--reason", "oops", s=s).returncode == 0
    tail = run("tail", f"{s.topic_prefix}notifications.broadcasts", "--from-beginning", "--timeout", "5")
    records = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [r["record"] for r in records] == [
        "AudienceMembersAdded",
        "AudienceMembersRemoved",
        "BroadcastRequested",
        "BroadcastCancelled",
    ]
    assert {r["key"] for r in records} == {"acme/beta"}
    assert records[0]["value"]["recipient_ids"] == ["m0", "m1", "m2"]
    assert records[2]["value"]["broadcast_id"] == bid == records[3]["value"]["broadcast_id"]
    bad = run("audience", "add", "beta", "-t", "acme", s=s)
    assert bad.returncode == 1 and "name recipients" in bad.stderr
    bad_id = run("audience", "cancel", "beta", "not-a-uuid", "-t", "acme", s=s)
    assert bad_id.returncode == 1 and "not a broadcast id" in bad_id.stderr


def test_catalog_shadow_replays_past_requests_with_a_candidate_catalog(
    topology: Settings, tmp_path: Path
) -> None:
    s = topology
    publish_catalog(s)
    order = {"order": "A-1", "carrier": "DHL"}
    with Client(s) as client:
        client.update_recipient(tenant="acme", recipient="ada", email="ada@example.com")
        sent = [
            client.send(tenant="acme", recipient=r, type="order.shipped", data=order) for r in ("ada", "bob")
        ]
        client.send(tenant="acme", recipient="ada", type="password.reset", data={"link": "https://x"})
    examples = (ROOT / "catalog" / "examples.toml").read_text()
    shipped = 'key = "order.shipped"\ncategory = "orders"\npriority = "normal"\n'
    shipped += 'channels = ["email", "push", "in_app"]'
    assert shipped in examples
    candidate = tmp_path / "candidate.toml"
    candidate.write_text(examples.replace(shipped, shipped.replace('"email", ', "")))

    shown = run("catalog", "shadow", str(candidate), "--json", s=s)
    assert shown.returncode == 0, shown.stderr
    changes = {c["recipient_id"]: c for c in map(json.loads, shown.stdout.splitlines())}
    assert {c["notification_id"] for c in changes.values()} == {str(n) for n in sent}
    assert changes["ada"]["changes"] == [{"channel": "email", "before": "QUEUED", "after": "nothing"}]
    assert changes["bob"]["changes"] == [
        {"channel": "email", "before": "SKIPPED no_address", "after": "nothing"}
    ]
    assert "1 changed types; 3 requests replayed, 2 would be planned differently" in " ".join(
        shown.stderr.split()
    )
    later = run("catalog", "shadow", str(candidate), "--from", "2099-01-01T00:00:00", s=s)
    assert later.returncode == 0 and "0 requests replayed" in later.stderr
    table = run("catalog", "shadow", str(candidate), s=s)
    assert "order.shipped" in table.stdout and "SKIPPED no_address" in table.stdout


def test_destination_set_and_remove(topology: Settings) -> None:
    s = topology
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    url = "https://hooks.example.com/t"
    args = ["destination", "set", "ops", "-t", "acme", "--url", url, "--secret", secret]
    assert run(*args, "--status", "FAILED", "--status", "DELIVERED", s=s).returncode == 0
    assert run("destination", "remove", "ops", "-t", "acme", s=s).returncode == 0
    bad = run("destination", "set", "ops", "-t", "acme", "--url", url, "--secret", "nope", s=s)
    assert bad.returncode == 1 and "invalid DestinationUpdated: secret" in bad.stderr
    tail = run("tail", f"{s.topic_prefix}notifications.destinations", "--from-beginning", "--timeout", "5")
    records = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [(r["record"], r["key"]) for r in records] == [
        ("DestinationUpdated", "acme/ops"),
        ("DestinationRemoved", "acme/ops"),
    ]
    assert records[0]["value"]["statuses"] == ["FAILED", "DELIVERED"]


def test_database_failures_are_one_clear_line(stack: Settings) -> None:
    nid = "00000000-0000-0000-0000-000000000001"
    down = os.environ | {"TIDINGS_POSTGRES_DSN": "postgresql://postgres@127.0.0.1:1/tidings"}
    bare = os.environ | {"TIDINGS_POSTGRES_DSN": stack.postgres_dsn.rsplit("/", 1)[0] + "/postgres"}
    for env, expected in [(down, "connection failed"), (bare, "(tidings db migrate?)")]:
        shown = subprocess.run([TIDINGS, "status", nid], capture_output=True, text=True, timeout=60, env=env)
        assert shown.returncode == 1 and "error: PostgreSQL" in shown.stderr and expected in shown.stderr
        assert "Traceback" not in shown.stderr


def test_catalog_publish_refuses_a_catalog_whose_example_fails_and_publishes_nothing(
    topology: Settings, tmp_path: Path
) -> None:
    from tidings.audit import read_all
    from tidings.topics import names

    s = topology
    examples = (ROOT / "catalog" / "examples.toml").read_text()
    assert 'carrier = "DHL"\n' in examples
    broken = tmp_path / "broken.toml"
    broken.write_text(examples.replace('carrier = "DHL"\n', ""))
    refused = run("catalog", "publish", str(broken), s=s)
    assert refused.returncode == 1
    assert (
        "example: order.shipped email: body" in refused.stderr and "'carrier' is undefined" in refused.stderr
    )
    assert list(read_all(s, names(s).catalog)) == []

    published = run("catalog", "publish", str(ROOT / "catalog"), s=s)
    assert published.returncode == 0, published.stderr
    assert "7 published" in published.stderr and "17 templates rendered" in " ".join(published.stderr.split())
    assert len(list(read_all(s, names(s).catalog))) == 7


def test_a_broker_out_of_reach_is_one_clear_error_not_a_traceback(stack: Settings) -> None:
    env_run = os.environ | {"TIDINGS_KAFKA_BOOTSTRAP": "127.0.0.1:9"}
    listed = subprocess.run([TIDINGS, "dlq", "list"], capture_output=True, text=True, timeout=90, env=env_run)
    assert listed.returncode == 1 and "error: Kafka:" in listed.stderr
    assert "Traceback" not in listed.stderr and len(listed.stderr.splitlines()) == 1


def test_recipients_set_produces_nothing_when_any_part_is_invalid(topology: Settings) -> None:
    """The profile was produced before the preferences were checked: the command said it failed while
    the new email had taken effect."""
    s = topology
    half = run(
        "recipients",
        "set",
        "-t",
        "acme",
        "-r",
        "half",
        "--email",
        "new@example.com",
        "--quiet-hours",
        "22:00",
        s=s,
    )
    assert half.returncode != 0
    tail = run("tail", f"{s.topic_prefix}notifications.recipients", "--from-beginning", "--timeout", "3")
    assert tail.returncode == 0 and tail.stdout.strip() == "", tail.stdout
