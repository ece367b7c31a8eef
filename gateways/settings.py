"""The settings of every channel gateway's consume loop (`gateways.runner`), read from `TIDINGS_GATEWAY_*`."""

from __future__ import annotations

import math

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TIDINGS_GATEWAY_", frozen=True, hide_input_in_errors=True)

    concurrency: int = Field(default=64, ge=1, description="Sends in flight per gateway process.")
    inflight_ttl: int = Field(default=60, ge=1, description="Seconds a crashed sender's claim lasts.")
    done_ttl: int = Field(default=7 * 24 * 3600, ge=60, description="Seconds a delivery stays deduped.")
    circuit_failures: int = Field(default=5, ge=1)
    circuit_cooloff: float = Field(default=30.0, gt=0)
    busy_backoff: float = Field(default=2.0, gt=0)
    erased_ttl: int = Field(
        default=400 * 24 * 3600,
        ge=60,
        description="Seconds an erasure cancels older commands.",
    )
    suppress_ttl: int = Field(default=900, ge=1, description="Seconds a dead address is refused here.")
    endpoint_disable_failures: int = Field(default=5, ge=1, description="Exhausted webhooks in a row...")
    endpoint_disable_after: float = Field(default=24 * 3600, ge=0, description="...spanning this long.")
    rates: str = Field(default="", description="Cluster-wide limits, e.g. 'smtp=50:100,sendgrid=600'.")
    chains: str = Field(default="", description="Per-tenant chains, e.g. 'acme=sendgrid,smtp;beta=ses'.")

    @model_validator(mode="after")
    def _rates_are_positive(self) -> GatewaySettings:
        """A rate of 0 (or a burst under 1) passed here and failed in Redis at the first send, stopping
        the gateway on every restart."""
        try:
            limits = self.rate_limits()
        except ValueError as exc:
            raise ValueError(f"rates: {exc}; write label=per_second[:burst], ...") from None
        for label, (rate, burst) in limits.items():
            if not (math.isfinite(rate) and rate > 0) or burst < 1:
                raise ValueError(f"rates: {label} needs a rate above 0 and a burst of at least 1")
        return self

    def tenant_chains(self) -> dict[str, list[str]]:
        """`tenant=label,label;...`: a tenant's own provider order; other tenants use the whole chain."""
        chains: dict[str, list[str]] = {}
        for item in filter(None, (part.strip() for part in self.chains.split(";"))):
            tenant, _, labels = item.partition("=")
            chains[tenant.strip()] = [label.strip() for label in labels.split(",") if label.strip()]
        return chains

    def rate_limits(self) -> dict[str, tuple[float, int]]:
        """`label=rate_per_second[:burst]` pairs; the burst defaults to one second's worth."""
        limits: dict[str, tuple[float, int]] = {}
        for item in filter(None, (part.strip() for part in self.rates.split(","))):
            label, _, spec = item.partition("=")
            rate, _, burst = spec.partition(":")
            limits[label.strip()] = (float(rate), int(burst) if burst else max(1, int(float(rate))))
        return limits
