"""Which services the dev stack treats as external."""

import pytest

from tidings import devstack
from tidings.config import Settings


def test_the_stacks_own_addresses_exported_by_dev_env_are_not_external(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`eval "$(tidings dev env)"` made `dev up`, `dev down` and the demo leave the stack alone."""
    for name in devstack.EXTERNAL_ENV.values():
        monkeypatch.delenv(name, raising=False)
    for name, value in devstack.env(Settings()).items():
        monkeypatch.setenv(name, value)
    assert [devstack.is_external(s) for s in devstack.EXTERNAL_ENV] == [False, False, False]
    monkeypatch.setenv("TIDINGS_REDIS_URL", "redis://cache.internal:6379/0")
    assert [devstack.is_external(s) for s in devstack.EXTERNAL_ENV] == [False, False, True]
