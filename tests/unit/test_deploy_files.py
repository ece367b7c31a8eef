"""The deployment files parse and agree with the dev stack (no Docker engine here to run them)."""

import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

from tidings.config import DEV_KAFKA_PORT, DEV_POSTGRES_PORT, DEV_REDIS_PORT

ROOT = Path(__file__).resolve().parents[2]


def test_compose_runs_the_same_three_services_on_the_dev_ports() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"kafka", "postgres", "redis"}
    published = {name: s["ports"][0].split(":")[1] for name, s in services.items()}
    assert published == {
        "kafka": str(DEV_KAFKA_PORT),
        "postgres": str(DEV_POSTGRES_PORT),
        "redis": str(DEV_REDIS_PORT),
    }
    assert all(s["ports"][0].startswith("127.0.0.1:") for s in services.values())
    assert services["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_local_pom_fetches_kafka_4() -> None:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    pom = ET.parse(ROOT / "deploy" / "local" / "pom.xml").getroot()
    version = pom.find("m:properties/m:kafka.version", ns)
    assert version is not None and version.text is not None and version.text.startswith("4.")
    artifacts = {
        d.findtext("m:artifactId", namespaces=ns) for d in pom.iterfind("m:dependencies/m:dependency", ns)
    }
    assert "kafka_2.13" in artifacts


def test_new_kafka_cluster_ids_never_look_like_an_option() -> None:
    from tidings.devstack.kafka import new_cluster_id

    ids = [new_cluster_id() for _ in range(5000)]
    assert not any(i.startswith("-") for i in ids)
    assert all(len(i) == 22 for i in ids) and len(set(ids)) == len(ids)
