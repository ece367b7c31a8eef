"""How long the router remembers a request part of which is digested and part deferred."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from tests.integration.test_digest_escalation import LIKED, outcomes_of, run_skewed
from tests.integration.test_router import decoded
from tidings.catalog import parse_type
from tidings.client import Client
from tidings.config import Settings
from tidings.events import DeliveryCommand, NotificationRequested
from tidings.ids import new_notification_id
from tidings.topics import names


def test_a_digested_request_with_a_channel_deferred_past_the_dedupe_window_is_planned_once(
    topology: Settings,
) -> None:
    """The mark of a digested request lasted until its digest closed (at least 7 days), whatever its
    other channels waited for: delivered again on day 8 (an outbox retry, a DLQ replay), a request
    whose in-app item waited 20 days was planned again, and that item went out twice. Such a type
    (a digest and an escalation) is refused at publish now; one published before still routes."""
    s = topology
    escalating = parse_type("*", LIKED).model_copy(
        update={"escalation_json": json.dumps({"steps": [{"after": "20d", "channel": "in_app"}]})}
    )
    request = NotificationRequested(
        tenant_id="acme",
        notification_id=new_notification_id(),
        recipient_id="ada",
        notification_type="post.liked",
        data_json=json.dumps({"by": "Cy", "post": "P"}),
    )
    with Client(s) as client:
        client.publish(escalating)
        client.update_recipient(tenant="acme", recipient="ada", email="ada@example.com")
        client.publish(request)
    run_skewed(s, 0, records=2)
    with Client(s) as client:
        client.publish(request)
    run_skewed(s, 8, records=1)
    deferred = [
        c
        for c in decoded(s, names(s).scheduled)
        if isinstance(c, DeliveryCommand) and c.notification_id == request.notification_id
    ]
    assert [c.channel for c in deferred] == ["in_app"], "planned once, not again"
    assert deferred[0].not_before is not None and deferred[0].not_before > datetime.now(UTC)
    mine = [o for o in outcomes_of(s) if o.notification_id == request.notification_id]
    assert [(o.status, o.reason) for o in mine if o.status == "SKIPPED"] == [("SKIPPED", "duplicate")]
