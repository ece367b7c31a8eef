"""Every registered provider against its local protocol server, in every answer mode the contract names."""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import time

import aiohttp
import pytest

import tests.servers
from gateways.base import DeliveryRejected, ProviderThrottled, ProviderUnavailable, Sent, load_providers
from tests.servers.base import MODES, SERVERS, Mode

TIMEOUT = 0.5
ANSWERED_TIMEOUT = 3.0
"""The timeout of the modes where the server answers: a loaded machine's pause must not turn them into one."""

for module in pkgutil.iter_modules(tests.servers.__path__):
    importlib.import_module(f"tests.servers.{module.name}")
PROVIDERS = sorted(load_providers())


def test_every_provider_has_a_protocol_server() -> None:
    assert PROVIDERS, "no providers registered"
    assert [key for key in PROVIDERS if key not in SERVERS] == []


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("key", PROVIDERS, ids=lambda key: "/".join(key))
def test_contract(key: tuple[str, str], mode: Mode) -> None:
    async def scenario() -> tuple[object, float, list[object], int]:
        async with SERVERS[key]() as server:
            server.mode = mode
            provider = server.provider(timeout=TIMEOUT if mode == "timeout" else ANSWERED_TIMEOUT)
            started = time.monotonic()
            try:
                async with aiohttp.ClientSession() as session:
                    result: object = await provider.send(session, server.command())
            except Exception as exc:
                result = exc
            finally:
                await provider.close()
            return result, time.monotonic() - started, list(server.accepted), server.retry_after

    result, took, accepted, retry_after = asyncio.run(scenario())
    if mode == "ok":
        assert isinstance(result, Sent) and result.provider_message_id, result
        assert len(accepted) == 1
        return
    assert accepted == []
    if mode == "reject":
        assert isinstance(result, DeliveryRejected) and result.permanent, result
    elif mode == "throttle":
        assert isinstance(result, ProviderThrottled), result
        assert result.retry_after == retry_after
    else:
        assert isinstance(result, ProviderUnavailable), result
        assert took < TIMEOUT * 4 + 1
