"""Push opens reported by the recipient's app: the edge checks the delivery is the caller's in the
delivery-status projection and records NotificationOpened/Clicked with its channel, the event the
scheduler's escalations and the inbox projection already honour."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp

from tests.integration.test_inbox import bearer, serving, token
from tests.integration.test_projections import project
from tests.integration.test_router import commands, decoded, publish_catalog, run_router
from tidings.client import Client
from tidings.config import Settings
from tidings.events import NotificationClicked, NotificationOpened
from tidings.topics import names


def test_an_app_reports_its_users_push_opened_and_clicked_and_nobody_elses(database: Settings) -> None:
    s = database
    publish_catalog(s)
    with Client(s) as client:
        client.register_device(tenant="acme", recipient="ada", device_id="phone", platform="fcm", token="t-1")
        client.send(
            tenant="acme", recipient="ada", type="comment.mention", data={"by": "grace", "thread": "T"}
        )
    run_router(s)
    [push] = [c for c in commands(s) if c.channel == "push"]
    project(s, "delivery_status")

    async def reports(base: str) -> list[int]:
        url = f"{base}/v1/me/deliveries/{push.delivery_id}"
        ada, grace, globex = (
            bearer(token("ada")),
            bearer(token("grace")),
            bearer(token("ada", tenant="globex")),
        )
        answers = []
        async with aiohttp.ClientSession() as http:
            for path, headers, body in [
                (f"{url}/opened", ada, None),
                (f"{url}/clicked", ada, {"url": "app://threads/T"}),
                (f"{url}/opened", grace, None),
                (f"{url}/opened", globex, None),
                (f"{url}/opened", {}, None),
                (f"{url}/liked", ada, None),
                (f"{base}/v1/me/deliveries/{uuid.uuid4()}/opened", ada, None),
                (f"{base}/v1/me/deliveries/not-a-uuid/opened", ada, None),
                (f"{url}/clicked", ada, {"url": 7}),
            ]:
                async with http.post(path, headers=headers, json=body) as r:
                    answers.append(r.status)
        return answers

    assert asyncio.run(serving(s, reports)) == [202, 202, 404, 404, 401, 404, 404, 404, 400]
    found: list[Any] = decoded(s, names(s).engagement)
    assert [type(e) for e in found] == [NotificationOpened, NotificationClicked]
    for event in found:
        assert (event.tenant_id, event.recipient_id, event.channel) == ("acme", "ada", "push")
        assert (event.notification_id, event.delivery_id) == (push.notification_id, push.delivery_id)
    assert found[1].url == "app://threads/T"
