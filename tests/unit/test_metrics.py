"""Component metrics: samples become Prometheus families labelled with the component and instance."""

from prometheus_client import generate_latest

from tidings.metrics import Sample, registry


def test_samples_become_counters_and_gauges_with_the_component_labels() -> None:
    lag = 7.0
    samples = [
        Sample("records_committed", 120),
        Sample("consumer_lag", lag, "gauge", {"topic": "t", "partition": "0"}),
        Sample("consumer_lag", 0, "gauge", {"topic": "t", "partition": "1"}),
    ]
    text = generate_latest(registry("router", "0", lambda: samples)).decode()
    assert 'tidings_records_committed_total{component="router",instance="0"} 120.0' in text
    assert "# TYPE tidings_consumer_lag gauge" in text
    assert 'tidings_consumer_lag{component="router",instance="0",partition="0",topic="t"} 7.0' in text
    assert 'partition="1",topic="t"} 0.0' in text
    assert "process_cpu_seconds_total" in text


def test_the_source_is_read_at_every_scrape() -> None:
    counted = {"n": 0}
    reg = registry("scheduler", "a", lambda: [Sample("timers_released", counted["n"])])
    counted["n"] = 3
    first = generate_latest(reg).decode()
    counted["n"] = 5
    second = generate_latest(reg).decode()
    assert "tidings_timers_released_total{" in first and "} 3.0" in first
    assert "} 5.0" in second
