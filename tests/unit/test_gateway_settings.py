import pytest

from gateways.runner import GatewayRunner, GatewaySettings
from tidings.config import Settings


def test_an_erasure_must_outlast_the_longest_retry_tier_twice() -> None:
    with pytest.raises(ValueError, match="ERASED_TTL"):
        GatewayRunner(Settings(retry_tiers="10s,6h"), "email", [], GatewaySettings(erased_ttl=12 * 3600 - 1))


def test_the_default_erasure_lifetime_covers_the_default_tiers() -> None:
    assert GatewaySettings().erased_ttl >= 2 * 6 * 3600
