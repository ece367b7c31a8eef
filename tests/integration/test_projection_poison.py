"""Records a projection cannot decode, whatever the error, go to the DLQ and the rest is applied."""

from __future__ import annotations

from typing import Any

from projections.base import Projection, Runner
from tests.integration.conftest import read_all
from tests.integration.test_projections import project, rows
from tidings.config import Settings
from tidings.events import RecipientErased, RecipientUpdated
from tidings.kafka import EventProducer, Incoming, Output
from tidings.kafka.records import REQUESTED_AT, header_map
from tidings.topics import names


def produce(s: Settings, *outputs: Output) -> None:
    with EventProducer(s) as producer:
        for out in outputs:
            producer.produce(out)


def test_an_erasure_stamped_past_year_9999_is_applied_at_its_log_time(database: Settings) -> None:
    """Its `tidings.requested_at` header raised OverflowError in decoding, which the runner did not
    take for a poison record: the recipients projection stopped on it at every restart."""
    s = database
    topic = names(s).recipients
    erased = Output.event(topic, RecipientErased(tenant_id="acme", recipient_id="ada"))
    produce(
        s,
        Output.event(topic, RecipientUpdated(tenant_id="acme", recipient_id="ada", email="ada@example.com")),
        Output.event(topic, RecipientUpdated(tenant_id="acme", recipient_id="bob", email="bob@example.com")),
        Output(erased.topic, erased.key, erased.value, [*erased.headers, (REQUESTED_AT, b"9" * 20)]),
    )
    project(s, "recipients")
    assert rows(s, "SELECT recipient_id FROM recipients ORDER BY 1") == [("bob",)]
    assert rows(s, "SELECT recipient_id FROM erasures") == [("ada",)]


def test_any_decoding_error_is_the_records_dead_letter_not_a_stopped_projection(database: Settings) -> None:
    s = database
    topic = names(s).recipients
    produce(
        s,
        *(
            Output.event(topic, RecipientUpdated(tenant_id="acme", recipient_id=r, email=f"{r}@example.com"))
            for r in ("ada", "eve", "bob")
        ),
    )
    projection = Projection.registry["recipients"]()
    decode = projection.decode_record

    def fragile(record: Incoming) -> Any:
        event = decode(record)
        if getattr(event, "recipient_id", None) == "eve":
            raise KeyError("a decoding bug for eve")
        return event

    projection.decode_record = fragile  # type: ignore[method-assign]
    runner = Runner(s, projection)
    try:
        runner.run(idle_exit_after=3.0)
    finally:
        runner.close()
    assert rows(s, "SELECT recipient_id FROM recipients ORDER BY 1") == [("ada",), ("bob",)]
    letters = [header_map(r.headers) for r in read_all(s, names(s).dlq)]
    assert [h["tidings.error.type"] for h in letters] == ["KeyError"]
    counted = {x.name: x.value for x in runner.samples() if x.labels == {"projection": "recipients"}}
    assert counted["dead_letters"] == 1, "the dead-letter alert never fired for a projection"
