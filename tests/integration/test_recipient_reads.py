"""What the API shows of a recipient on the real stack: the recipients projection folds feedback as the
router does, so suppressions and category unsubscribes show in the reads, the preference centre and the
export."""

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from pydantic import SecretStr

from gateways.edge import EdgeSettings
from projections import Projection, Runner
from tests.integration.conftest import table_checksums
from tests.integration.test_api import KEYS, call
from tests.integration.test_edge import serving
from tests.integration.test_inbox import SECRET, token
from tests.integration.test_projections import project, rows
from tidings.client import Client
from tidings.config import Settings
from tidings.events import ProviderFeedback

EDGE = EdgeSettings(api_keys=SecretStr(KEYS), inbox_jwt_secret=SecretStr(SECRET))


def feedback(kind: str, recipient: str | None, address: str, **fields: Any) -> ProviderFeedback:
    at = fields.pop("at", datetime.now(UTC))
    channel = fields.pop("channel", "email")
    return ProviderFeedback(
        tenant_id="acme",
        recipient_id=recipient,
        kind=kind,  # type: ignore[arg-type]
        channel=channel,
        address=address,
        occurred_at=at,
        provider="sendgrid",
        **fields,
    )


def test_reads_show_the_suppressions_and_unsubscribes_the_router_applies(database: Settings) -> None:
    """Read from the recipients topic alone, `suppressions` and `unsubscribed` were always empty: the
    preference centre showed no unsubscribe, and the export left out the addresses held back."""
    s = database
    with Client(s) as client:
        for who in ("ada", "bob"):
            client.update_recipient(tenant="acme", recipient=who, email=f"{who}@example.com")
        client.erase_recipient(tenant="acme", recipient="bob", reason="ticket 3")
    project(s, "recipients")
    erased_at = rows(s, "SELECT erased_at FROM erasures WHERE recipient_id = 'bob'")[0][0]
    with Client(s) as client:
        for event in (
            feedback("hard_bounce", "ada", "Ada@Example.com"),
            feedback("unsubscribe", "ada", "ada@example.com", category="marketing"),
            feedback("unsubscribe", "ada", "ada@example.com", category="social"),
            feedback("resubscribe", "ada", "ada@example.com", category="social"),
            feedback("complaint", None, "ada@example.com"),
            feedback("delivered", "dan", "dan@example.com"),
            feedback("hard_bounce", "bob", "bob@example.com", at=erased_at - timedelta(seconds=1)),
        ):
            client.publish(event, wait=False)
    project(s, "recipients")
    assert rows(s, "SELECT recipient_id FROM recipients ORDER BY 1") == [("ada",)], (
        "feedback from before bob's erasure does not bring his address back, and a receipt for a "
        "recipient addressed directly makes no row"
    )

    async def reads(base: str) -> list[tuple[int, Any]]:
        async with aiohttp.ClientSession() as http:
            me = {"Authorization": f"Bearer {token('ada')}"}
            found = [
                await call(http, "GET", f"{base}/v1/recipients/ada"),
                await call(http, "GET", f"{base}/v1/recipients/ada/export"),
                await call(http, "GET", f"{base}/v1/me/preferences", key=None, headers=me),
            ]
            return [(code, body) for code, body, _ in found]

    (code, view), (_, export), (_, centre) = asyncio.run(serving(s, reads, EDGE))
    assert code == 200
    assert {k: v["reason"] for k, v in view["suppressions"].items()} == {
        "email:ada@example.com": "hard_bounce"
    }
    assert set(view["unsubscribed"]) == {"marketing/email"}
    assert export["profile"]["suppressions"] == view["suppressions"]
    assert export["profile"]["unsubscribed"] == view["unsubscribed"]
    assert centre["unsubscribed"] == view["unsubscribed"]


def test_a_rebuild_folds_the_two_topics_in_the_order_they_were_written(database: Settings) -> None:
    """An address set again after a bounce to it is lifted. Rebuilt one topic after the other, the
    profile's changes came first and the bounce after them, and the address came back suppressed."""
    s = database
    with Client(s) as client:
        client.update_recipient(tenant="acme", recipient="cy", email="cy@example.com")
    project(s, "recipients")
    with Client(s) as client:
        client.publish(feedback("hard_bounce", "cy", "cy@example.com"))
    project(s, "recipients")
    with Client(s) as client:
        client.update_recipient(tenant="acme", recipient="cy", email="cy.2@example.com")
        client.update_recipient(tenant="acme", recipient="cy", email="cy@example.com")
    project(s, "recipients")
    [(state,)] = rows(s, "SELECT state FROM recipients")
    assert (state["email"], state["suppressions"]) == ("cy@example.com", {})
    before = table_checksums(s, ["recipients"])
    runner = Runner(s, Projection.registry["recipients"]())
    try:
        runner.rebuild()
    finally:
        runner.close()
    assert table_checksums(s, ["recipients"]) == before
