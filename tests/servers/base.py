"""The shape every local protocol server has, so one contract suite can drive every provider.

A server is an async context manager bound to 127.0.0.1 on a free port. Tests set `mode` before a send:

* ``ok``          accept and answer with a provider message id
* ``reject``      a permanent refusal of this message (HTTP 400/422, SMTP 550)
* ``throttle``    HTTP 429 with ``Retry-After: <retry_after>`` (SMTP: 421 / 451 4.7.x)
* ``unavailable`` HTTP 503 (SMTP: 421 service not available then close)
* ``timeout``     accept the connection and never answer
* ``reset``       close the connection without answering

`accepted` lists what the server accepted in ``ok`` mode, as the provider's own protocol expresses it
(a parsed JSON body, or the raw RFC 5322 message for SMTP).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol

from gateways.base import Provider
from tidings.events import DeliveryCommand

Mode = Literal["ok", "reject", "throttle", "unavailable", "timeout", "reset"]
MODES: tuple[Mode, ...] = ("ok", "reject", "throttle", "unavailable", "timeout", "reset")


class ProtocolServer(Protocol):
    mode: Mode
    retry_after: int
    accepted: list[Any]

    async def __aenter__(self) -> ProtocolServer: ...

    async def __aexit__(self, *exc: object) -> None: ...

    def provider(self, *, timeout: float) -> Provider:
        """A provider instance configured to talk to this server, with `timeout` seconds per request."""
        ...

    def command(self) -> DeliveryCommand:
        """A valid command for this provider's channel whose address the server accepts."""
        ...


SERVERS: dict[tuple[str, str], Callable[[], ProtocolServer]] = {}


def register(
    channel: str, name: str
) -> Callable[[Callable[[], ProtocolServer]], Callable[[], ProtocolServer]]:
    def wrap(factory: Callable[[], ProtocolServer]) -> Callable[[], ProtocolServer]:
        SERVERS[(channel, name)] = factory
        return factory

    return wrap
