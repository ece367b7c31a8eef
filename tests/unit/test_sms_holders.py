"""Inbound opt-outs addressed to the recipients holding the number; never lost when the lookup fails."""

import asyncio
import uuid

import pytest

from gateways.sms import holders
from tidings.events import ProviderFeedback

STOP = ProviderFeedback(
    tenant_id="acme", kind="sms_stop", channel="sms", address="+447700900555", provider="twilio"
)


def test_one_copy_per_holder_each_keyed_to_its_recipient_with_its_own_event_id() -> None:
    copies = holders.addressed(STOP, ["ada", "bob"])
    assert [(c.recipient_id, c.key) for c in copies] == [("ada", "acme/ada"), ("bob", "acme/bob")]
    assert len({c.event_id for c in copies} | {STOP.event_id}) == 3
    assert holders.addressed(STOP, ["ada"])[0].event_id == uuid.uuid5(STOP.event_id, "holder/ada")
    assert [c.model_dump(exclude={"recipient_id", "event_id"}) for c in copies] == [
        STOP.model_dump(exclude={"recipient_id", "event_id"})
    ] * 2
    assert holders.addressed(STOP, []) == [STOP]


def test_only_sms_opt_outs_without_a_recipient_are_looked_up() -> None:
    assert holders.wanted(STOP)
    assert holders.wanted(STOP.model_copy(update={"kind": "sms_start"}))
    assert not holders.wanted(STOP.model_copy(update={"recipient_id": "ada"}))
    assert not holders.wanted(STOP.model_copy(update={"kind": "hard_bounce", "channel": "email"}))


def test_an_unreachable_database_leaves_the_opt_out_as_it_came(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(holders, "TIMEOUT", 0.5)
    bounce = STOP.model_copy(update={"kind": "hard_bounce", "channel": "email", "address": "a@example.com"})

    async def scenario() -> list[ProviderFeedback]:
        pool = holders.new_pool("postgresql://nobody@127.0.0.1:1/none")
        await pool.open()
        try:
            return await holders.resolve(pool, [STOP, bounce])
        finally:
            await pool.close()

    assert asyncio.run(scenario()) == [STOP, bounce]


def test_the_lookup_bounds_join_the_dsns_own_options() -> None:
    bare = holders.pool_options("postgresql://tidings@127.0.0.1:5432/tidings")
    assert bare == {"options": "-c statement_timeout=5000", "connect_timeout": 5}
    own = holders.pool_options("host=db dbname=t options='-c search_path=app' connect_timeout=3")
    assert own == {"options": "-c search_path=app -c statement_timeout=5000", "connect_timeout": 3}
    assert holders.pool_options("host=db connect_timeout=30")["connect_timeout"] == 5
    assert holders.pool_options("host=db connect_timeout=0")["connect_timeout"] == 5
    assert holders.pool_options("host=db connect_timeout=2.5")["connect_timeout"] == 2
