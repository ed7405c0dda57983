"""A real Redis Cluster for the tests: three redis-server primaries on loopback, owned by pid.

Nothing is mocked: the nodes are ``redis-server --cluster-enabled yes``
processes joined by ``redis-cli --cluster create`` (both come with the
redis-server package that ``scripts/ensure_services.sh`` installs), so slot
routing, MOVED redirections, CLUSTERDOWN and cross-node pub/sub are Redis's own.

One cluster per pytest process (``shared_cluster``): the Django contract suite
needs its URLs at import time, when fixtures do not exist yet, so it is started
on first use and killed when pytest unconfigures. Tests that kill a node build
their own with ``LocalCluster(...).start()``. ``VELRO_TEST_CLUSTER_URLS`` (comma
separated) points the tests at an existing cluster instead, which they only
flush and never kill.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
import redis

from tests.support import wait_for

CLUSTER_BUS_OFFSET = 10_000  # Redis talks to its peers on port + 10000
# Short, so a killed primary makes the cluster report itself down within a test's patience.
NODE_TIMEOUT_MS = 1000


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_ports(count: int) -> list[int]:
    """Ports whose bus port (+10000) is free too, both below the ephemeral range.

    Client sockets take their local ports from the ephemeral range (32768 and
    up on Linux); a bus port there could be taken between this check and the
    node's start.
    """
    ports: list[int] = []
    while len(ports) < count:
        port = random.randint(12_000, 22_000)
        if port not in ports and _bindable(port) and _bindable(port + CLUSTER_BUS_OFFSET):
            ports.append(port)
    return ports


class ClusterNode:
    """One redis-server in cluster mode; ``kill``/``start`` keep its port and nodes.conf, so it rejoins."""

    def __init__(self, workdir: Path, port: int, extra: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.port = port
        self.extra = extra
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def cluster_state(self) -> str:
        client = self.client()
        try:
            return client.execute_command("CLUSTER INFO")["cluster_state"]  # redis-py parses it into a dict
        finally:
            client.close()

    def replica_in_sync(self) -> bool:
        """True for a primary; for a replica, whether its link to the primary is up."""
        client = self.client()
        try:
            info = client.info("replication")
        finally:
            client.close()
        return info.get("role") != "slave" or info.get("master_link_status") == "up"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (make test installs it)")
        self.process = subprocess.Popen(
            [
                binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.workdir / f"nodes-{self.port}.conf"),
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.workdir),
                "--logfile", str(self.log),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(self._answers, f"redis-server (cluster node) on port {self.port} did not start", until_dead=self.process)
        except RuntimeError as exc:
            tail = self.log.read_text()[-1000:] if self.log.exists() else ""
            raise RuntimeError(f"{exc}; its log ends: {tail}") from None

    @property
    def log(self) -> Path:
        return self.workdir / f"node-{self.port}.log"

    def _answers(self) -> bool:
        """Our process answers as a cluster node (not some other server on the port)."""
        return bool(self.cluster_state())

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None


class LocalCluster:
    """Three primaries, no replicas: every slot has exactly one owner, so killing one leaves slots uncovered."""

    def __init__(self, workdir: Path | None = None, size: int = 3, *, replicas: int = 0, full_coverage: bool = True) -> None:
        """``replicas``: per primary (``size`` counts them too), for failover.

        ``full_coverage=False``: the surviving nodes keep serving their slots when one is lost.
        """
        self.replicas = replicas
        if shutil.which("redis-cli") is None:
            raise RuntimeError("redis-cli is not installed (it comes with redis-server; make test installs it)")
        self._owns_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="velro-cluster-"))
        extra = () if full_coverage else ("--cluster-require-full-coverage", "no")
        self.nodes = [ClusterNode(self.workdir, port, extra) for port in free_cluster_ports(size)]
        self.external_urls: list[str] | None = None

    @classmethod
    def external(cls, urls: list[str]) -> LocalCluster:
        cluster = cls.__new__(cls)
        cluster.workdir, cluster.nodes, cluster.external_urls, cluster._owns_workdir = None, [], urls, False
        return cluster

    @property
    def urls(self) -> list[str]:
        return self.external_urls or [node.url for node in self.nodes]

    def start(self) -> LocalCluster:
        """Start the nodes and join them; on failure kill what started and say why."""
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            created = subprocess.run(
                ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                check=False,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]} {created.stderr[-2000:]}")
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ok(self, seconds: float = 20) -> None:
        """Every running node says cluster_state:ok (slots covered, nodes agree), replicas in sync.

        A replica that has not finished its first sync refuses to fail over,
        so a failover test must not kill its primary before then.
        """
        def all_ok() -> bool:
            return all(node.cluster_state() == "ok" and node.replica_in_sync() for node in self.running())

        wait_for(all_ok, "the Redis Cluster did not reach cluster_state:ok", seconds)

    def wait_down(self, seconds: float = 20) -> None:
        """The surviving nodes noticed a lost primary and refuse keyed commands (CLUSTERDOWN)."""
        def all_fail() -> bool:
            return all(node.cluster_state() == "fail" for node in self.running())

        wait_for(all_fail, "the Redis Cluster did not notice the lost node", seconds)

    def running(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.process is not None]

    def client(self) -> redis.cluster.RedisCluster:
        """A plain cluster client for looking behind the cache."""
        nodes = [redis.cluster.ClusterNode(*_host_port(url)) for url in self.urls]
        return redis.cluster.RedisCluster(startup_nodes=nodes, socket_timeout=2)

    def flush(self) -> None:
        client = self.client()
        try:
            client.flushdb(target_nodes=redis.cluster.RedisCluster.PRIMARIES)
        finally:
            client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _host_port(url: str) -> tuple[str, int]:
    parsed = redis.connection.parse_url(url)
    return parsed.get("host", "127.0.0.1"), int(parsed.get("port", 6379))


_shared: LocalCluster | None = None
_shared_lock = threading.Lock()


def shared_cluster() -> LocalCluster:
    """The test process's cluster, started on first use (or the one VELRO_TEST_CLUSTER_URLS names)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            external = os.environ.get("VELRO_TEST_CLUSTER_URLS")
            if external:
                _shared = LocalCluster.external([url.strip() for url in external.split(",") if url.strip()])
            else:
                _shared = _start_with_retries()
        return _shared


def _start_with_retries(attempts: int = 3) -> LocalCluster:
    """Fresh ports on each attempt: another process may take a port between the check and the start."""
    for attempt in range(attempts):
        try:
            return LocalCluster().start()
        except RuntimeError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def stop_shared_cluster() -> None:
    """Kill the shared cluster's nodes by pid (pytest_unconfigure); an external cluster is left alone.

    The caches on it stop their listeners first, so its end is not logged as an outage.
    """
    global _shared
    with _shared_lock:
        if _shared is None:
            return
        from velro_cache.tiers.process import _all_states, discard

        for state in list(_all_states):
            if set(state.options.redis_urls) & set(_shared.urls):
                discard(state)
        _shared.stop()
        _shared = None


def cluster_urls() -> list[str]:
    return shared_cluster().urls


@pytest.fixture(scope="session")
def redis_cluster() -> LocalCluster:
    """The shared three-primary cluster; tests keep to their own key prefixes and never kill its nodes."""
    return shared_cluster()


@pytest.fixture
def own_cluster(tmp_path) -> LocalCluster:
    """A cluster this test alone may break (kill a primary, restart it)."""
    cluster = LocalCluster(tmp_path).start()
    yield cluster
    cluster.stop()
