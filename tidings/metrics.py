"""Consumes a running component's counters; produces its Prometheus endpoint.

Every `tidings run` component keeps plain counters (records committed, batches aborted, dead letters,
client recoveries, sends by result...). With `TIDINGS_METRICS_PORT` set, a prometheus_client HTTP
server on its own thread serves them at /metrics, bound to `TIDINGS_METRICS_HOST` (loopback unless
told otherwise). A collector reads the counters when Prometheus scrapes, so the hot path pays nothing
for metrics. Names: `tidings_<name>_total` for counters, `tidings_<name>` for gauges, labelled with
the component and its instance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector


@dataclass(frozen=True)
class Sample:
    name: str
    value: float
    kind: Literal["counter", "gauge"] = "counter"
    labels: dict[str, str] = field(default_factory=dict)
    help: str = ""


Source = Callable[[], Iterable[Sample]]


class ComponentCollector(Collector):
    def __init__(self, component: str, instance: str, source: Source) -> None:
        self.base = {"component": component, "instance": instance}
        self.source = source

    def collect(self) -> Iterator[Metric]:
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for s in self.source():
            labels = self.base | s.labels
            family = families.get(s.name)
            if family is None:
                make = CounterMetricFamily if s.kind == "counter" else GaugeMetricFamily
                family = families[s.name] = make(f"tidings_{s.name}", s.help or s.name, labels=list(labels))
            family.add_metric(list(labels.values()), s.value)
        yield from families.values()


def registry(component: str, instance: str, source: Source) -> CollectorRegistry:
    reg = CollectorRegistry()
    ProcessCollector(registry=reg)
    reg.register(ComponentCollector(component, instance, source))
    return reg


def serve(component: str, instance: str, source: Source, port: int, host: str = "127.0.0.1") -> None:
    """Serve /metrics on a daemon thread for the life of the process."""
    start_http_server(port, addr=host, registry=registry(component, instance, source))


def lag_samples(lag: dict[tuple[str, int], int]) -> list[Sample]:
    """A consume loop's records behind the end, per topic and partition."""
    return [
        Sample("consumer_lag", n, "gauge", {"topic": t, "partition": str(p)}, "records behind the end")
        for (t, p), n in lag.items()
    ]
