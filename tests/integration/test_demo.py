import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tidings.config import Settings
from tidings.kafka import EventProducer, Output, delete_topics

TIDINGS = str(Path(sys.executable).with_name("tidings"))


@pytest.mark.timeout(600)
def test_demo_runs_the_pipeline_end_to_end_and_again_on_the_same_stack(stack: Settings) -> None:
    prefix = f"demo{uuid.uuid4().hex[:6]}."
    env = os.environ | {"TIDINGS_TOPIC_PREFIX": prefix, "TIDINGS_PARTITIONS": "3", "COLUMNS": "200"}
    try:
        result = subprocess.run([TIDINGS, "demo"], env=env, capture_output=True, text=True, timeout=280)
        with EventProducer(stack) as producer:
            producer.produce(Output(f"{prefix}notifications.requested", b"acme/x", b"not avro at all"))
        again = subprocess.run([TIDINGS, "demo"], env=env, capture_output=True, text=True, timeout=280)
    finally:
        delete_topics(stack, prefix)
    assert result.returncode == 0, result.stderr[-3000:]
    err = " ".join(result.stderr.split())  # rich wraps long lines
    try:
        check_first_run(result, err)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- demo output (end) ---\n{result.stderr[-4000:]}") from None
    assert again.returncode == 0, again.stderr[-3000:]  # past a poison record on its topics, too
    assert "his next order email: SKIPPED (unsubscribed from orders email)" in " ".join(again.stderr.split())


def check_first_run(result: subprocess.CompletedProcess[str], err: str) -> None:
    assert "21 requests planned: 27 delivery commands, 77 outcomes" in err
    assert "throttle: 2 of grace's password resets were over the type's limit (3 per 15 minutes)" in err
    assert "in_app: 12 items put in recipients' inboxes" in err
    stats = r"api: GET /v1/stats answered HTTP 200: \d+ notifications of \d+ types in the last hour; "
    assert re.search(stats + r"order.shipped by email: \d+% sent, median \d+ ms", err), err[-2000:]
    feed = r"inbox: ada has \d+ unread items; the newest 3: .*(liked your post|shipped)"
    assert re.search(feed, err), err[-2000:]
    assert "digest: 3 likes collected into 1 digest notification(s)" in err
    assert (
        "scheduler: released 3 deferred deliveries when due, cancelled 3, dropped 1 escalations already seen"
    ) in err
    assert "email: 9 sent; the sink holds 9 messages (6 with one-click List-Unsubscribe" in err
    assert "webhook: 1 sent; the receiver verified 1 signatures" in err
    assert "Ihre Bestellung A-1001 ist unterwegs" in result.stdout
    assert "21 notifications in PostgreSQL" in err
    assert "password.reset: SKIPPED" in err
    assert "audience: 1 broadcast to the 3 members of 'beta' made 3 requests" in err
    assert err.count("product.announcement (broadcast): SENT") == 3
    assert "post.liked (digest of 3): SENT" in err and "3 new likes on your posts" in result.stdout
    assert "comment.mention (seen in the app): SENT" in err
    assert "order.shipped (scheduled): SENT" in err
    assert "order.shipped (cancelled): CANCELLED" in err
    assert (
        "edge: alan's one-click unsubscribe answered HTTP 200; his next order email: "
        "SKIPPED (unsubscribed from orders email)"
    ) in err
    assert "api: the shop's backend POSTed alan's next order: HTTP 202" in err
    relayed = re.search(
        r"relay: (\d+) outcomes became webhooks to acme's destination; the receiver verified (\d+)", err
    )
    assert relayed and int(relayed[1]) == int(relayed[2]) > 0, err[-2000:]
    assert re.search(r"api: GET /v1/notifications/\{id\} answered HTTP 200: \w+;.* email SKIPPED", err), err[
        -2000:
    ]
    assert "opted_out" in result.stdout and "dead letters" in err
