"""deploy/ is valid and names only real CLI commands, settings, projections, channels and metrics."""

from __future__ import annotations

import ast
import asyncio
import importlib
import inspect
import json
import pkgutil
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import kubernetes_validate
import pytest
import typer
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic_settings import BaseSettings
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.30"
IMAGE = "ghcr.io/tidings/tidings"
PROCESSORS = ("router", "scheduler", "audience", "relay")
WORKLOADS = ("Deployment", "StatefulSet", "Job", "CronJob")
BATCH = ("Job", "CronJob")


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def resources(*, examples: bool = True) -> list[dict[str, Any]]:
    return [
        d for p in manifest_files() if examples or not p.name.endswith(".example.yaml") for d in documents(p)
    ]


def workloads() -> list[dict[str, Any]]:
    return [r for r in resources() if r["kind"] in WORKLOADS]


def pod_template(workload: dict[str, Any]) -> dict[str, Any]:
    if workload["kind"] == "CronJob":
        workload = workload["spec"]["jobTemplate"]
    template: dict[str, Any] = workload["spec"]["template"]
    return template


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = pod_template(workload)["spec"]
    return spec


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def by_component() -> dict[str, dict[str, Any]]:
    return {
        w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: w
        for w in workloads()
        if w["kind"] not in BATCH
    }


def config_data() -> dict[str, str]:
    [config] = [r for r in resources() if r["kind"] == "ConfigMap"]
    data: dict[str, str] = config["data"]
    return data


# Kubernetes


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_every_manifest_validates_against_the_kubernetes_schemas(path: Path) -> None:
    docs = documents(path)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        assert "namespace" not in doc["metadata"], f"{path.name}: namespace hard-coded"


def test_kustomization_lists_exactly_the_manifests_and_sets_the_image() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert "namespace" not in kustomization
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    deployable = {p.name for p in manifest_files() if not p.name.endswith(".example.yaml")}
    assert set(listed) == deployable
    assert kustomization["images"] == [{"name": IMAGE, "newTag": "latest"}]
    for workload in workloads():
        for c in containers(workload):
            assert c["image"].partition(":")[0] == IMAGE, c["name"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed")
def test_kustomize_renders_every_listed_resource_with_an_overridable_image(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    shutil.copytree(K8S, overlay / "base")
    (overlay / "kustomization.yaml").write_text(
        "resources: [base]\nnamespace: staging\nimages:\n  - name: ghcr.io/tidings/tidings\n    newTag: v9\n"
    )
    out = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, check=True)
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert len(rendered) == len(resources(examples=False))
    assert {d["metadata"]["namespace"] for d in rendered} == {"staging"}
    images = {c["image"] for d in rendered if d["kind"] in WORKLOADS for c in containers(d)}
    assert images == {f"{IMAGE}:v9"}


def test_the_secret_is_an_example_of_placeholders_only() -> None:
    secrets = [r for r in resources() if r["kind"] == "Secret"]
    assert [s["metadata"]["name"] for s in secrets] == ["tidings-secrets"]
    values = secrets[0]["stringData"]
    for key in ("TIDINGS_POSTGRES_DSN", "TIDINGS_EDGE_API_KEYS", "TIDINGS_EDGE_INBOX_JWT_SECRET"):
        assert "CHANGE-ME" in values[key]
    assert urlsplit(values["TIDINGS_POSTGRES_DSN"]).password == "CHANGE-ME"
    assert urlsplit(config_data()["TIDINGS_POSTGRES_DSN"]).password is None
    for workload in workloads():
        for c in containers(workload):
            refs = [next(iter(e.values()))["name"] for e in c["envFrom"]]
            assert refs == ["tidings-config", "tidings-secrets"], f"{c['name']}: the Secret must come last"


def test_the_config_lets_prometheus_scrape_and_replicates_topics() -> None:
    data = config_data()
    assert data["TIDINGS_METRICS_HOST"] == "0.0.0.0"
    assert data["TIDINGS_METRICS_PORT"] == "9400"
    assert data["TIDINGS_REPLICATION_FACTOR"] == "3"
    assert int(data["TIDINGS_PARTITIONS"]) >= 1
    assert all(isinstance(v, str) for v in data.values())


def test_provider_callbacks_behind_the_ingress_are_mounted_and_verified_on_the_public_url() -> None:
    """Twilio signs the URL it called (https, the public host): behind the Ingress the edge sees http and
    the pod's host, so without the public URL every inbound SMS and receipt failed its signature. The
    Postmark route is mounted only with both its user and password."""
    data, secret = config_data(), next(r for r in resources() if r["kind"] == "Secret")["stringData"]
    public = urlsplit(data["TIDINGS_EDGE_PUBLIC_URL"])
    for key in ("TIDINGS_TWILIO_STATUS_CALLBACK_URL", "TIDINGS_VONAGE_STATUS_CALLBACK_URL"):
        called = urlsplit(data[key])
        assert (called.scheme, called.netloc) == (public.scheme, public.netloc) == ("https", called.netloc)
    assert data["TIDINGS_EDGE_POSTMARK_USERNAME"] and secret["TIDINGS_EDGE_POSTMARK_PASSWORD"]


def test_exactly_once_processors_are_statefulsets_named_by_their_pod() -> None:
    from tidings.kafka.transactional import TXN_TIMEOUT_S

    components = by_component()
    budgets = [r for r in resources() if r["kind"] == "PodDisruptionBudget"]
    for name in PROCESSORS:
        workload = components[name]
        assert workload["kind"] == "StatefulSet"
        [c] = pod_spec(workload)["containers"]
        assert c["command"] == ["tidings", "run", name, "--instance", "$(POD_NAME)"]
        assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in c["env"]
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
        assert pod_spec(workload)["terminationGracePeriodSeconds"] > TXN_TIMEOUT_S
        selector = workload["spec"]["selector"]["matchLabels"]
        assert any(b["spec"]["selector"]["matchLabels"] == selector for b in budgets), name


def test_every_long_running_container_has_requests_a_grace_period_and_a_metrics_port() -> None:
    metrics_port = int(config_data()["TIDINGS_METRICS_PORT"])
    for component, workload in by_component().items():
        spec = pod_spec(workload)
        assert spec["terminationGracePeriodSeconds"] >= 30, component
        [c] = spec["containers"]
        assert set(c["resources"]["requests"]) == {"cpu", "memory"}, component
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        if component != "edge":
            assert ports == {"metrics": metrics_port}, component


def test_the_edge_listens_on_every_interface_with_probes_and_a_service() -> None:
    from gateways.edge import EdgeSettings

    edge = by_component()["edge"]
    assert edge["kind"] == "Deployment"
    [c] = pod_spec(edge)["containers"]
    assert c["command"] == ["tidings", "run", "edge"]
    assert {"name": "TIDINGS_EDGE_HOST", "value": "0.0.0.0"} in c["env"]
    port = int(config_data().get("TIDINGS_EDGE_PORT", EdgeSettings.model_fields["port"].default))
    assert c["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    services = [r for r in resources() if r["kind"] == "Service" and r["metadata"]["name"] == "tidings-edge"]
    assert services and services[0]["spec"]["ports"][0]["targetPort"] == "http"
    assert services[0]["spec"]["selector"] == edge["spec"]["selector"]["matchLabels"]


def test_one_gateway_per_channel_with_real_providers() -> None:
    from gateways.base import load_providers
    from tidings.events import CHANNELS

    providers = load_providers()
    gateways = {k: w for k, w in by_component().items() if k.startswith("gateway-")}
    assert set(gateways) == {f"gateway-{c}" for c in CHANNELS}
    for component, workload in gateways.items():
        [c] = pod_spec(workload)["containers"]
        command = c["command"]
        assert command[:4] == ["tidings", "run", "gateway", component.removeprefix("gateway-")]
        chain = command[5::2]
        assert chain and command[4::2] == ["--provider"] * len(chain)
        for provider in chain:
            assert (command[3], provider.partition("@")[0]) in providers, provider


def test_one_projection_deployment_per_registered_projection() -> None:
    from projections import Projection

    projections = {k: w for k, w in by_component().items() if k.startswith("projection-")}
    assert set(projections) == {f"projection-{name}" for name in Projection.registry}
    for component, workload in projections.items():
        assert workload["kind"] == "Deployment"
        [c] = pod_spec(workload)["containers"]
        assert c["command"] == ["tidings", "run", "projection", component.removeprefix("projection-")]
        assert workload["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_setup_job_applies_topics_migrates_and_publishes_the_catalog() -> None:
    [job] = [w for w in workloads() if w["kind"] == "Job"]
    commands = [c["command"] for c in containers(job)]
    assert commands == [
        ["tidings", "topics", "apply"],
        ["tidings", "db", "migrate"],
        ["tidings", "catalog", "publish", "/app/catalog"],
    ]
    assert (ROOT / "catalog").is_dir()


def test_a_daily_job_prunes_the_history_the_config_keeps() -> None:
    [cron] = [w for w in workloads() if w["kind"] == "CronJob"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert [c["command"] for c in containers(cron)] == [["tidings", "db", "prune"]]
    from tidings.config import Settings

    days = Settings.model_validate({"history_days": config_data()["TIDINGS_HISTORY_DAYS"]}).history_days
    assert days is not None and days >= 30


def container_commands() -> list[list[str]]:
    return [c["command"] for w in workloads() for c in containers(w)]


@pytest.mark.parametrize("command", container_commands(), ids=" ".join)
def test_every_container_command_is_a_real_cli_command(command: list[str]) -> None:
    from tidings.cli import app

    assert command[0] == "tidings"
    args = command[1:]
    result = CliRunner().invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    group: click.Command = typer.main.get_command(app)
    while isinstance(group, click.Group) and args and args[0] in group.commands:
        group, args = group.commands[args[0]], args[1:]
    assert not isinstance(group, click.Group), f"{command}: not a command"
    local = [str(ROOT / "catalog") if a == "/app/catalog" else a for a in args]
    group.make_context("tidings", local)


def settings_classes() -> list[type[BaseSettings]]:
    for package in ("tidings", "gateways", "processors", "projections"):
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, f"{package}."):
            importlib.import_module(info.name)

    def walk(cls: type[BaseSettings]) -> Iterator[type[BaseSettings]]:
        for sub in cls.__subclasses__():
            yield sub
            yield from walk(sub)

    return [
        c
        for c in walk(BaseSettings)
        if c.__module__.split(".")[0] in ("tidings", "gateways", "processors", "projections")
    ]


def real_settings() -> tuple[set[str], set[str]]:
    """Every TIDINGS_* variable a settings class reads, and every env_prefix."""
    variables, prefixes = set(), set()
    for cls in settings_classes():
        prefix = str(cls.model_config.get("env_prefix", "")).upper()
        prefixes.add(prefix)
        variables |= {f"{prefix}{name}".upper() for name in cls.model_fields}
    return variables, prefixes


def test_every_tidings_variable_in_deploy_is_a_real_setting() -> None:
    variables, prefixes = real_settings()
    assert {"TIDINGS_KAFKA_BOOTSTRAP", "TIDINGS_EDGE_API_KEYS", "TIDINGS_GATEWAY_CONCURRENCY"} <= variables
    named: set[str] = set()
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.parts[-2] != "local"):
        for found in re.finditer(r"\bTIDINGS_[A-Z0-9_]*[A-Z0-9](_\*)?", path.read_text()):
            token = found.group(0)
            if token.endswith("_*"):
                stem = token.removesuffix("*")
                assert stem in prefixes or stem.rsplit("_", 2)[0] + "_" in prefixes, f"{path}: {token}"
            else:
                assert token in variables, f"{path.relative_to(ROOT)}: {token} is no setting"
                named.add(token)
    for resource in resources():
        keys = {**resource.get("data", {}), **resource.get("stringData", {})}
        for workload in [resource] if resource["kind"] in WORKLOADS else []:
            keys |= {e["name"]: "" for c in containers(workload) for e in c.get("env", [])}
        assert set(keys) - {"POD_NAME"} <= variables, resource["metadata"]["name"]
    assert len(named) > 20


# Metrics


class Probe:
    """Stands in for a component's state: every attribute is another probe; calling one yields nothing."""

    def __init__(self, **known: Any) -> None:
        self.__dict__.update(known)

    def __getattr__(self, name: str) -> Probe:
        return Probe()

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[()]:
        return ()


def gateway_events() -> set[str]:
    """The `event` label values: every literal the gateway runner and its handling pass to `_count`."""
    import gateways.handling
    import gateways.runner

    tree = ast.Module(
        body=[
            *ast.parse(inspect.getsource(gateways.runner)).body,
            *ast.parse(inspect.getsource(gateways.handling)).body,
        ],
        type_ignores=[],
    )
    return {
        call.args[0].value
        for call in ast.walk(tree)
        if isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and call.func.attr == "_count"
        and call.args
        and isinstance(call.args[0], ast.Constant)
    }


def component_samples() -> list[Any]:
    """What every component's `samples()` yields, called on probes (no Kafka, PostgreSQL or Redis)."""
    from gateways.runner import GatewayRunner
    from processors.audience import Audience
    from processors.router import Router
    from processors.scheduler import Scheduler
    from projections import Runner
    from tidings.kafka.transactional import TransactionalLoop

    loop = TransactionalLoop.samples(Probe(lag={("notifications.requested", 0): 0}))  # type: ignore[arg-type]
    found = [*loop]
    for cls in (Router, Scheduler, Audience, Runner):
        found += cls.samples(Probe())  # type: ignore[arg-type]
    runner = Probe(counts=dict.fromkeys(gateway_events(), 1), channel="email", paused_until={}, partitions={})
    found += GatewayRunner.samples(runner)  # type: ignore[arg-type]
    return found


def exported_by_components() -> set[str]:
    from tidings.metrics import Sample, registry

    plain = [Sample(s.name, 0.0, s.kind, {k: "x" for k in s.labels}) for s in component_samples()]
    text = generate_latest(registry("router", "0", lambda: plain)).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def exported_by_the_edge() -> set[str]:
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from gateways import api_schema, ops

    async def scrape() -> str:
        application = web.Application()
        ops.mount(application, api_schema.Accepted)
        async with TestClient(TestServer(application)) as client:
            assert (await client.get("/healthz")).status == 200
            return await (await client.get("/metrics")).text()

    text = asyncio.run(scrape())
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def exported() -> set[str]:
    return exported_by_components() | exported_by_the_edge() | {"up"}


def expressions() -> dict[str, list[str]]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dashboard = json.loads((DEPLOY / "grafana" / "tidings.json").read_text())
    panels = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    variables = [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return {"alerts.yml": alerts, "tidings.json": panels + variables}


def metric_names(expr: str) -> set[str]:
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return set(re.findall(r"\b(?:tidings_[a-z0-9_]+|process_[a-z0-9_]+|up)\b(?!\s*\()", bare))


def test_the_exported_set_is_derived_from_the_code() -> None:
    names = exported()
    assert {"tidings_records_committed_total", "tidings_consumer_lag", "tidings_paused_partitions"} <= names
    assert {"tidings_requests_throttled_total", "tidings_broadcast_requests_made_total"} <= names
    assert {"tidings_edge_requests_total", "tidings_edge_request_seconds_bucket"} <= names
    assert "process_resident_memory_bytes" in names
    assert {"sent", "exhausted", "circuit_open", "dead_letters", "redis_unavailable"} <= gateway_events()


def test_every_metric_in_the_alerts_and_the_dashboard_is_exported() -> None:
    names = exported()
    for source, exprs in expressions().items():
        used: set[str] = set()
        for expr in exprs:
            found = metric_names(expr)
            assert found, f"{source}: no metric in {expr!r}"
            assert found <= names, f"{source}: {sorted(found - names)} not exported ({expr!r})"
            used |= found
        events = {e for expr in exprs for e in re.findall(r'event="([^"]+)"', expr)}
        assert events <= gateway_events(), f"{source}: unknown gateway events {events - gateway_events()}"


def test_every_alert_has_a_firing_and_a_silent_promtool_case() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = [r["alert"] for g in rules["groups"] for r in g["rules"]]
    assert len(alerts) == len(set(alerts)) >= 10
    cases = yaml.safe_load((DEPLOY / "prometheus" / "alerts_test.yml").read_text())
    assert cases["rule_files"] == ["alerts.yml"]
    checks = [c for t in cases["tests"] for c in t["alert_rule_test"]]
    assert {c["alertname"] for c in checks} == set(alerts)
    for alert in alerts:
        assert any(c["alertname"] == alert and c["exp_alerts"] for c in checks), f"{alert} never fires"
        assert any(c["alertname"] == alert and not c["exp_alerts"] for c in checks), f"{alert} never silent"


def test_the_dashboard_is_importable() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "tidings.json").read_text())
    assert dashboard["schemaVersion"] >= 36
    [source] = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert source["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": f"${{{source['name']}}}"}
            assert panel["targets"]
    used = {n for e in expressions()["tidings.json"] for n in metric_names(e)}
    for wanted in (
        "tidings_records_committed_total",
        "tidings_consumer_lag",
        "tidings_dead_letters_total",
        "tidings_gateway_events_total",
        "tidings_paused_partitions",
        "tidings_edge_requests_total",
        "tidings_edge_request_seconds_bucket",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ):
        assert wanted in used, wanted
