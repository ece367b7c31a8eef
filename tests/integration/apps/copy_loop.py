"""Consumes NotificationRequested from a topic; produces one DeliveryOutcome per request, exactly once.

Run as a subprocess by the kill -9 tests: `python -m tests.integration.apps.copy_loop IN OUT GROUP TXN_ID`.
Prints a line per committed batch so the test can kill it mid-stream.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable

from tidings.config import settings
from tidings.events import DeliveryOutcome, NotificationRequested
from tidings.kafka import Incoming, Output, TransactionalLoop


def copy(output_topic: str, delay: float) -> object:
    def handle(record: Incoming) -> Iterable[Output]:
        event = record.decode()
        assert isinstance(event, NotificationRequested)
        if delay:
            time.sleep(delay)
        outcome = DeliveryOutcome(
            tenant_id=event.tenant_id,
            notification_id=event.notification_id,
            recipient_id=event.recipient_id,
            status="QUEUED",
        )
        return [Output.event(output_topic, outcome)]

    return handle


def main() -> None:
    source, target, group, txn_id = sys.argv[1:5]
    delay = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    loop = TransactionalLoop(
        settings(),
        group_id=group,
        topics=[source],
        handle=copy(target, delay),  # type: ignore[arg-type]
        transactional_id=txn_id,
        batch_size=50,
        static_membership=True,
    )
    original = loop.process

    def process(batch: list[Incoming]) -> None:
        original(batch)
        print(f"committed {loop.committed_batches}", flush=True)

    loop.process = process  # type: ignore[method-assign]
    loop.run(idle_exit_after=float(sys.argv[6]) if len(sys.argv) > 6 else None)


if __name__ == "__main__":
    main()
