"""promtool accepts deploy/prometheus, and running components export every metric it and Grafana use."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_router import publish_catalog
from tests.ports import free_port
from tests.unit.test_deploy import (
    BATCH,
    by_component,
    expressions,
    metric_names,
    pod_spec,
    pod_template,
    workloads,
)
from tidings.client import Client
from tidings.config import Settings
from tidings.devstack.tools import promtool

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
TIDINGS = str(Path(sys.executable).with_name("tidings"))
NOT_BUILT_IN = "field kubernetes_sd_configs not found"


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60)


def knows_kubernetes(tmp_path: Path) -> bool:
    """Debian's promtool is built without Kubernetes service discovery; upstream builds have it."""
    probe = tmp_path / "k8s-probe.yml"
    probe.write_text("scrape_configs:\n  - job_name: p\n    kubernetes_sd_configs:\n      - role: pod\n")
    result = run_promtool("check", "config", str(probe))
    assert result.returncode == 0 or NOT_BUILT_IN in result.stdout + result.stderr, result.stdout
    return result.returncode == 0


def with_file_discovery(tmp_path: Path, targets: list[dict[str, Any]]) -> Path:
    """prometheus.yml with its pod discovery replaced by a file of the same targets, relabelling kept."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
    job["file_sd_configs"] = [{"files": ["targets.json"]}]
    (tmp_path / "targets.json").write_text(json.dumps(targets))
    shutil.copy(PROMETHEUS / "alerts.yml", tmp_path / "alerts.yml")
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def sanitized(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def pod_targets() -> list[dict[str, Any]]:
    """What Kubernetes pod discovery reports for one pod of every workload in deploy/k8s (a target per
    container port, one per container without ports), plus a foreign pod with a `metrics` port."""
    targets = []
    for n, workload in enumerate(workloads(), start=1):
        pod = f"{workload['metadata']['name']}-0"
        meta = {
            "__meta_kubernetes_namespace": "prod",
            "__meta_kubernetes_pod_name": pod,
            "__meta_kubernetes_pod_phase": "Succeeded" if workload["kind"] in BATCH else "Running",
        }
        for key, value in pod_template(workload)["metadata"]["labels"].items():
            meta[f"__meta_kubernetes_pod_label_{sanitized(key)}"] = value
        spec = pod_spec(workload)
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            for port in c.get("ports", []) or [None]:
                labels = dict(meta)
                address = f"10.0.0.{n}"
                if port is not None:
                    labels["__meta_kubernetes_pod_container_port_name"] = port["name"]
                    address += f":{port['containerPort']}"
                targets.append({"targets": [address], "labels": labels})
    foreign = {
        "__meta_kubernetes_pod_container_port_name": "metrics",
        "__meta_kubernetes_pod_phase": "Running",
    }
    targets.append({"targets": ["10.0.1.1:9400"], "labels": foreign})
    return targets


def test_promtool_accepts_the_prometheus_config(tmp_path: Path) -> None:
    config = PROMETHEUS / "prometheus.yml"
    if not knows_kubernetes(tmp_path):
        config = with_file_discovery(tmp_path, pod_targets())
    result = run_promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_relabelling_scrapes_every_tidings_pod_once_and_nothing_else(tmp_path: Path) -> None:
    config = with_file_discovery(tmp_path, pod_targets())
    result = run_promtool("check", "service-discovery", "--timeout=2s", str(config), "tidings")
    assert result.returncode == 0, result.stderr
    scraped = [t["labels"] for t in json.loads(result.stdout[result.stdout.index("[") :]) if t["labels"]]
    components = by_component()
    assert sorted(t["component"] for t in scraped) == sorted(components)
    for target in scraped:
        workload = components[target["component"]]
        assert target["instance"] == target["pod"] == f"{workload['metadata']['name']}-0"
        assert target["namespace"] == "prod"
        assert target["__metrics_path__"] == "/metrics"
        [c] = pod_spec(workload)["containers"]
        port = {p["name"]: p["containerPort"] for p in c["ports"]}[
            "http" if c["name"] == "edge" else "metrics"
        ]
        assert target["__address__"].endswith(f":{port}")


def test_promtool_accepts_the_alert_rules() -> None:
    result = run_promtool("check", "rules", str(PROMETHEUS / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    count = sum(len(g["rules"]) for g in rules["groups"])
    assert f"SUCCESS: {count} rules found" in result.stdout


def test_the_alert_rule_unit_tests_pass() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def scrape(port: int) -> dict[str, list[dict[str, str]]]:
    """Sample names and their label sets; {} while the endpoint does not answer yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
            text = r.read().decode()
    except OSError:
        return {}
    found: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(dict(sample.labels))
    return found


def count(samples: dict[str, list[dict[str, str]]], name: str, text: str) -> int:
    return len([labels for labels in samples.get(name, []) if text in json.dumps(labels)])


def poke(port: int) -> None:
    with contextlib.suppress(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3).close()


@pytest.mark.timeout(300)
def test_running_components_export_every_metric_the_alerts_and_the_dashboard_use(
    database: Settings, tmp_path: Path
) -> None:
    s = database
    publish_catalog(s)
    with Client(s) as client:
        client.update_recipient(tenant="acme", recipient="ada", email="ada@example.com", wait=False)
        for i in range(3):
            data = {"order": f"A-{i}", "carrier": "DHL"}
            client.send(tenant="acme", recipient="ada", type="order.shipped", data=data, wait=False)
    edge_port = free_port()
    commands = {
        "router": ["run", "router", "--instance", "d0"],
        "scheduler": ["run", "scheduler", "--instance", "d0"],
        "audience": ["run", "audience", "--instance", "d0"],
        "relay": ["run", "relay", "--instance", "d0"],
        "gateway-in_app": ["run", "gateway", "in_app", "--provider", "inbox"],
        "projection-delivery_status": ["run", "projection", "delivery_status"],
        "edge": ["run", "edge"],
    }
    base = os.environ | {
        "TIDINGS_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
        "TIDINGS_TOPIC_PREFIX": s.topic_prefix,
        "TIDINGS_PARTITIONS": str(s.partitions),
        "TIDINGS_RETRY_TIERS": s.retry_tiers,
        "TIDINGS_POSTGRES_DSN": s.postgres_dsn,
        "TIDINGS_REDIS_URL": s.redis_url,
        "TIDINGS_EDGE_PORT": str(edge_port),
    }
    ports = {name: edge_port if name == "edge" else free_port() for name in commands}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = {name: tmp_path / f"{name}.log" for name in commands}
    for name, args in commands.items():
        with logs[name].open("wb") as out:
            env = base | {"TIDINGS_METRICS_PORT": str(ports[name])}
            procs[name] = subprocess.Popen([TIDINGS, *args], env=env, stdout=out, stderr=out)
    scraped: dict[str, dict[str, list[dict[str, str]]]] = {}
    try:
        deadline = time.monotonic() + 75
        while True:
            for name, proc in procs.items():
                assert proc.poll() is None, f"{name} exited: {logs[name].read_text()[-2000:]}"
            poke(edge_port)
            scraped = {name: scrape(port) for name, port in ports.items()}
            ready = (
                count(scraped["router"], "tidings_consumer_lag", "notifications.requested")
                and count(
                    scraped["projection-delivery_status"], "tidings_consumer_lag", "notifications.outcomes"
                )
                and count(scraped["gateway-in_app"], "tidings_gateway_events_total", '"sent"')
                and count(scraped["gateway-in_app"], "tidings_consumer_lag", "notifications.delivery.in_app")
                and "tidings_edge_requests_total" in scraped["edge"]
                and all(scraped.values())
            )
            if ready:
                break
            assert time.monotonic() < deadline, {n: sorted(m) for n, m in scraped.items()}
            time.sleep(0.5)
    finally:
        grace = {c: pod_spec(w)["terminationGracePeriodSeconds"] for c, w in by_component().items()}
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        stopped = {name: proc.wait(timeout=grace[name]) for name, proc in procs.items()}
    assert stopped == dict.fromkeys(procs, 0), {n: logs[n].read_text()[-1500:] for n in procs}

    exported = {metric for samples in scraped.values() for metric in samples} | {"up"}
    for source, exprs in expressions().items():
        used = {name for expr in exprs for name in metric_names(expr)}
        assert used <= exported, f"{source}: {sorted(used - exported)} not exported by the running components"
    for name, samples in scraped.items():
        if name != "edge":
            tidings = [lb for metric, rows in samples.items() if metric.startswith("tidings_") for lb in rows]
            assert tidings and {lb["component"] for lb in tidings} == {name}
