"""Runs a single-node Apache Kafka 4.x (KRaft, broker+controller) from Maven Central jars on loopback.

The dev stack's broker lives under `.devstack/kafka` on the dev ports; tests that must kill and restart
a broker start a private one (`root`, `port`, `controller`) so the shared one is never disturbed.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

from tidings.config import DEV_KAFKA_CONTROLLER_PORT, DEV_KAFKA_PORT, Settings
from tidings.devstack.common import (
    PROJECT_ROOT,
    ServiceStatus,
    cache_dir,
    pid_alive,
    require,
    run,
    short_hash,
    stack_dir,
    stop_pid,
    wait_for,
)
from tidings.errors import DevStackError, KafkaUnavailable

POM = PROJECT_ROOT / "deploy" / "local" / "pom.xml"
HEAP = "-Xms512m -Xmx1g"

SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=6
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
transaction.max.timeout.ms=900000
message.max.bytes=2097152
log.retention.check.interval.ms=60000
file.delete.delay.ms=1000
"""

LOG4J2 = """\
status = error
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {logs}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka.server.KafkaRaftServer
logger.kafka.level = INFO
logger.txn.name = kafka.coordinator.transaction
logger.txn.level = INFO
"""


class _Broker(subprocess.Popen[bytes]):
    """A broker outlives the process that started it (`tidings dev up` returns; a test session ends and
    `tidings dev down` stops it), so one still running when its Popen is collected is not the leak
    Python's ResourceWarning reports; an exited one is reaped as usual."""

    def __del__(self) -> None:
        if self.poll() is not None:
            super().__del__()


_children: dict[Path, _Broker] = {}
"""Brokers this process started, kept so they are reaped after they exit instead of lingering as zombies."""


def home() -> Path:
    path = stack_dir() / "kafka"
    path.mkdir(parents=True, exist_ok=True)
    return path


FETCH_ATTEMPTS = 3
MAVEN_NETWORK = ["-Dmaven.wagon.rto=60000", "-Dmaven.wagon.http.retryHandler.count=5"]
"""A read stalled for a minute is retried (Maven's default waits 30 minutes, past the fetch's own limit,
and one stalled download from Central failed the whole stack)."""


def libs_dir() -> Path:
    """The jars, fetched once per pom content by Maven into a cache outside the repo."""
    target = cache_dir() / f"kafka-{short_hash(POM.read_text())}"
    libs = target / "libs"
    if (target / ".complete").exists():
        return libs
    mvn = require("mvn", ["maven"], why="fetching Kafka from Maven Central")
    require("java", ["openjdk-17-jre-headless"], why="running Kafka")
    staging = target / "staging"
    fetch = [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies", f"-DoutputDirectory={staging}"]
    for attempt in range(1, FETCH_ATTEMPTS + 1):
        shutil.rmtree(staging, ignore_errors=True)
        try:
            run([*fetch, *MAVEN_NETWORK], what="Maven fetching the Kafka jars", timeout=600)
            break
        except DevStackError:
            if attempt == FETCH_ATTEMPTS:
                raise
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    (target / ".complete").touch()
    return libs


def new_cluster_id() -> str:
    """A random Kafka cluster id (URL-safe base64 of 16 bytes) that does not start with '-': the
    storage tool's argument parser reads such an id as an option and refuses to format. A 1-in-64
    chance per fresh stack, and it failed a clean-clone CI run; Kafka's own Uuid.randomUuid() avoids
    it the same way."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def _java(libs: Path, main: str, *args: str, logs: Path) -> list[str]:
    return [
        "java",
        *HEAP.split(),
        f"-Dkafka.logs.dir={logs}",
        f"-Dlog4j2.configurationFile={logs.parent / 'log4j2.properties'}",
        "-cp",
        f"{libs}/*",
        main,
        *args,
    ]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _ready(settings: Settings, port: int = DEV_KAFKA_PORT) -> bool:
    from tidings.kafka import wait_until_ready

    try:
        return _port_open(port) and wait_until_ready(settings, timeout=3) > 0
    except KafkaUnavailable:
        return False


def up(
    settings: Settings,
    timeout: float = 120.0,
    *,
    root: Path | None = None,
    port: int = DEV_KAFKA_PORT,
    controller: int = DEV_KAFKA_CONTROLLER_PORT,
) -> str:
    """Start the broker unless it runs; `settings.kafka_bootstrap` must name `port`."""
    root = root or home()
    root.mkdir(parents=True, exist_ok=True)
    pid_file, log = root / "pid", root / "kafka.log"
    if pid_alive(pid_file) and _ready(settings, port):
        return "already running"
    stop_pid(pid_file)
    libs = libs_dir()
    data, logs = root / "data", root / "logs"
    logs.mkdir(exist_ok=True)
    (root / "server.properties").write_text(
        SERVER_PROPERTIES.format(port=port, controller=controller, data=data)
    )
    (root / "log4j2.properties").write_text(LOG4J2.format(logs=logs))
    if not (data / "meta.properties").exists():
        cluster_id = new_cluster_id()
        run(
            _java(
                libs,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(root / "server.properties"),
                logs=logs,
            ),
            what="formatting Kafka storage",
        )
    if _port_open(port):
        raise DevStackError(
            f"port {port} is taken by another process; stop it or set TIDINGS_KAFKA_BOOTSTRAP"
        )
    with open(log, "ab") as out:
        proc = _Broker(
            _java(libs, "kafka.Kafka", str(root / "server.properties"), logs=logs),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=root,
        )
    pid_file.write_text(str(proc.pid))
    if (previous := _children.pop(root, None)) is not None:
        previous.poll()
    _children[root] = proc
    try:
        wait_for(
            lambda: _ready(settings, port),
            timeout=timeout,
            what="Kafka",
            log=logs / "server.log",
            alive=lambda: proc.poll() is None,
        )
    except BaseException:
        stop_pid(pid_file, timeout=10)
        raise
    return f"started (pid {proc.pid})"


def down(root: Path | None = None) -> bool:
    return stop_pid((root or home()) / "pid", timeout=60)


def status(settings: Settings) -> ServiceStatus:
    external = "TIDINGS_KAFKA_BOOTSTRAP" in os.environ
    running = _ready(settings) if not external else _ready_external(settings)
    return ServiceStatus("kafka", running, external, settings.kafka_bootstrap)


def _ready_external(settings: Settings) -> bool:
    from tidings.kafka import wait_until_ready

    try:
        return wait_until_ready(settings, timeout=3) > 0
    except KafkaUnavailable:
        return False
