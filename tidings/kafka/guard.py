"""A deadline for librdkafka calls that can outlive their own timeout.

`send_offsets_to_transaction()` can block forever after the group coordinator went away (a broker
killed and restarted): librdkafka never checks the timeout of coordinator requests
(confluentinc/librdkafka#5456, #5511, open in 2.16). A router blocked there stops without a word. The
call runs in a daemon thread instead; when it has not returned by the caller's deadline (the loop allows
15 s beyond the call's own timeout), the caller gets a fatal `KafkaException` and replaces the client.
The stuck thread and its client are abandoned (a new producer with the same transactional id fences
the old one), at most a few times per process before the loop gives up and exits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException


def within(seconds: float, call: Callable[[], Any], what: str) -> Any:
    """`call()`'s result, or its exception; a fatal KafkaException when it has not returned in time."""
    outcome: list[Any] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target, name=f"kafka-{what}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        error = KafkaError(KafkaError._FATAL, f"{what} did not return within {seconds:.0f}s", fatal=True)
        raise KafkaException(error)
    if failure:
        raise failure[0]
    return outcome[0] if outcome else None
