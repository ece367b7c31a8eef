"""The provider contract every channel gateway uses: typed errors that say whether to retry, a send result,
and automatic registration (a provider is one file; adding one touches no other file).

* ProviderError
  + ProviderThrottled(retry_after)   retriable after a pause; the runner opens the circuit
  + ProviderUnavailable              retriable now or on the next tier (5xx, timeout, reset)
  + DeliveryRejected(reason, permanent)  the provider refused this message; never retried if permanent
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from tidings.errors import ConfigError, TidingsError
from tidings.events import DeliveryCommand


class ProviderError(TidingsError):
    """Its message is what a provider said, made valid UTF-8 (`printable`)."""

    def __init__(self, message: str) -> None:
        super().__init__(printable(message))


def printable(text: str) -> str:
    """`text` with what no record can hold escaped (an undecodable byte as `\\xe4`). aiosmtplib
    decodes a reply with surrogateescape, so a Latin-1 `550 Empfänger unbekannt` carried lone surrogates
    into the outcome, whose id and Avro encoding both refused them: the gateway crashed on that command
    at every restart."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class ProviderThrottled(ProviderError):
    retriable = True

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProviderUnavailable(ProviderError):
    """`retry_after` is a floor for the next attempt (SMTP 4xx: no sooner than the configured minimum)."""

    retriable = True

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeliveryRejected(ProviderError):
    """The message, not the provider: a permanent rejection fails it; one that is not permanent (a
    greylisted recipient, a device over its own limit) retries it, no sooner than `retry_after`,
    without counting against the provider's circuit."""

    def __init__(
        self,
        reason: str,
        *,
        permanent: bool = True,
        address_dead: bool = False,
        refused: bool = False,
        retry_after: float | None = None,
        dead_since: float | None = None,
        failover: bool = True,
    ) -> None:
        super().__init__(reason)
        self.reason = printable(reason)
        self.permanent = permanent
        self.retriable = not permanent
        self.address_dead = address_dead or refused
        self.refused = refused
        """The address's owner refused the channel (the provider says the number replied STOP): the
        feedback is the channel's refusal, which only the owner lifts, instead of its delivery failure."""
        self.retry_after = retry_after
        self.failover = failover
        """False for a rejection that is not permanent and is about the address at this vendor (a
        device over its own message rate): another profile of the chain (`fcm@backup`) would send to
        the same device at once, so the command goes straight to its retry."""
        self.dead_since = dead_since
        """When the provider last knew the address dead (epoch seconds), if it says: the feedback's
        provider time, so a device registered again after it keeps its token."""


@dataclass(frozen=True)
class Sent:
    provider: str
    provider_message_id: str | None = None


class Provider:
    """Subclasses set `channel`, `name` and `settings_class`, take their settings as the only constructor
    argument, and implement `send`; they register themselves.

    `label` names the instance in outcomes: a chain may hold the same provider twice with different
    settings (`smtp` then `smtp@backup`, the latter read from `TIDINGS_SMTP_BACKUP_*`).
    """

    registry: ClassVar[dict[tuple[str, str], type[Provider]]] = {}
    channel: ClassVar[str]
    name: ClassVar[str]
    settings_class: ClassVar[type[BaseSettings] | None] = None
    per_endpoint: ClassVar[bool] = False
    """Whether a command's address is an endpoint someone else runs and names (a webhook URL, a Web Push
    subscription): its failures and throttling are then the endpoint's, and the runner keeps a circuit
    per tenant and endpoint instead of one for the provider."""
    _label: str | None = None

    @classmethod
    def from_env(cls, profile: str | None = None) -> Provider:
        if cls.settings_class is None:
            provider = cls()
        else:
            prefix = str(cls.settings_class.model_config.get("env_prefix", ""))
            env_prefix = f"{prefix}{profile.upper()}_" if profile else prefix
            try:
                provider = cls(cls.settings_class(_env_prefix=env_prefix))  # type: ignore[call-arg]
            except ValidationError as exc:
                wrong = _by_variable(env_prefix, exc)
                raise ConfigError(f"provider {cls.channel}/{cls.name}: {wrong}") from None
        return provider.named(f"{cls.name}@{profile}" if profile else cls.name)

    @property
    def label(self) -> str:
        return self._label or self.name

    def named(self, label: str) -> Provider:
        self._label = label
        return self

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls, "name", None):
            Provider.registry[(cls.channel, cls.name)] = cls

    def accepts(self, command: DeliveryCommand) -> bool:
        """Whether this provider can deliver to the command's address at all (push: the device's
        platform). A chain skips providers that cannot; failover is among those that can."""
        return True

    async def send(self, session: aiohttp.ClientSession, command: DeliveryCommand) -> Sent:
        raise NotImplementedError

    async def close(self) -> None:
        """Release pooled connections; the runner calls it once at shutdown."""


def load_providers() -> dict[tuple[str, str], type[Provider]]:
    """Import every module under gateways/<channel>/ so each provider registers itself."""
    import gateways

    for channel in pkgutil.iter_modules(gateways.__path__):
        if channel.ispkg:
            package = importlib.import_module(f"gateways.{channel.name}")
            for module in pkgutil.iter_modules(package.__path__):
                if not module.name.startswith("_"):
                    importlib.import_module(f"gateways.{channel.name}.{module.name}")
    return dict(Provider.registry)


def _by_variable(env_prefix: str, exc: ValidationError) -> str:
    """Each failing setting named by the environment variable that sets it."""
    return "; ".join(
        f"{env_prefix}{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()
    )
