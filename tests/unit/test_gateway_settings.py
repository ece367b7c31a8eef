import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from gateways.runner import GatewayRunner, GatewaySettings, dead_key, failing_key
from tests.integration.test_gateway_runner import commands
from tests.unit.test_deploy import settings_classes
from tidings.config import Settings


def test_an_erasure_must_outlast_the_longest_retry_tier_twice() -> None:
    with pytest.raises(ValueError, match="ERASED_TTL"):
        GatewayRunner(Settings(retry_tiers="10s,6h"), "email", [], GatewaySettings(erased_ttl=12 * 3600 - 1))


def test_the_default_erasure_lifetime_covers_the_default_tiers() -> None:
    assert GatewaySettings().erased_ttl >= 2 * 6 * 3600


def test_dead_address_keys_of_two_tenants_never_coincide() -> None:
    [base] = commands("x", 1)
    odd = base.model_copy(update={"tenant_id": "a:webhook", "address": "x"})
    plain = base.model_copy(update={"tenant_id": "a", "address": "webhook:x"})
    assert dead_key("p.", odd) != dead_key("p.", plain)


def test_failing_endpoint_keys_of_two_tenants_never_coincide() -> None:
    [base] = commands("x", 1)
    odd = base.model_copy(update={"tenant_id": "a:https", "address": "//x"})
    plain = base.model_copy(update={"tenant_id": "a", "address": "https://x"})
    assert failing_key("p.", odd) != failing_key("p.", plain)


def test_a_provider_missing_settings_names_the_variables_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from gateways.base import load_providers
    from tidings.errors import ConfigError

    for name in [n for n in os.environ if n.startswith("TIDINGS_TWILIO_")]:
        monkeypatch.delenv(name)
    twilio = load_providers()[("sms", "twilio")]
    with pytest.raises(ConfigError, match="TIDINGS_TWILIO_ACCOUNT_SID: Field required"):
        twilio.from_env()
    with pytest.raises(ConfigError, match="TIDINGS_TWILIO_BACKUP_AUTH_TOKEN"):
        twilio.from_env("backup")


@pytest.mark.parametrize("rates", ["smtp=0", "smtp=-1", "smtp=5:0", "smtp=nan", "smtp=fast"])
def test_rates_must_be_positive_numbers(rates: str) -> None:
    """A rate of 0 passed and failed in Redis at the first send, stopping the gateway on every restart."""
    with pytest.raises(ValidationError, match="rates"):
        GatewaySettings(rates=rates)
    assert GatewaySettings(rates="smtp=0.5,ses=10:20").rate_limits() == {"smtp": (0.5, 1), "ses": (10.0, 20)}


@pytest.mark.parametrize("cls", settings_classes(), ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_a_settings_error_never_prints_what_it_was_given(cls: type[BaseSettings]) -> None:
    """A refused secret (too short, the public default) ended in the crash log of every pod: pydantic
    prints each error's input, for a model check the whole input with every other secret in it."""
    marker = "s3cr3t-" + "x" * 8
    with pytest.raises(ValidationError) as refused:
        cls(**{name: {"value": marker} for name in cls.model_fields})
    assert refused.value.errors() and marker not in str(refused.value)
    for short in cls.model_fields.keys() & {"unsubscribe_secret", "inbox_jwt_secret"}:
        with pytest.raises(ValidationError) as refused:
            cls(**{short: marker})
        assert marker not in str(refused.value)
