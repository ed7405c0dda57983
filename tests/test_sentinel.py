"""Redis Sentinel (``OPTIONS["SENTINELS"]``): the cache follows the master through a failover (issue 14).

Real processes on free loopback ports: a master, a replica and three
sentinels (``redis-sentinel``, or ``redis-server --sentinel`` where only the
server is installed). Two caches with their own L1 play two worker processes.
While one thread writes versioned values through both and others read through
both (each read a "request", so read-your-writes runs as in a real one), the
master is failed over, by ``SENTINEL FAILOVER`` and by SIGKILL. Judged: no
call raised to its caller, and no read that started after the new master was
in place served a value a returned write had replaced
(``tests.history.checker``, the same rule as the histories).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import threading
import time

import pytest
import redis

from tests.history.checker import check
from tests.redis_server import RedisServer, free_port
from tests.support import wait_for

SERVICE = "mymaster"
KEYS = [f"s{number}" for number in range(4)]


class SentinelProcess:
    """One sentinel, started from its own config file (sentinels rewrite it)."""

    def __init__(self, workdir, master_port: int) -> None:
        self.port = free_port()
        self.conf = workdir / f"sentinel-{self.port}.conf"
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {workdir}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 4000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        binary = shutil.which("redis-sentinel")
        command = [binary, str(self.conf)] if binary else [shutil.which("redis-server"), str(self.conf), "--sentinel"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.client().ping(), f"sentinel on {self.port} did not start", 10, until_dead=self.process)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def master(self) -> tuple[str, int]:
        host, port = self.client().sentinel_get_master_addr_by_name(SERVICE)
        return host, int(port)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


class Deployment:
    """A master, a replica and three sentinels watching it."""

    def __init__(self, workdir) -> None:
        self.servers = []
        for name in ("a", "b"):
            (workdir / name).mkdir()
            server = RedisServer(workdir / name)
            server.start()
            self.servers.append(server)
        master, replica = self.servers
        replica.client().replicaof("127.0.0.1", master.port)
        wait_for(lambda: replica.client().info("replication").get("master_link_status") == "up", "replica did not sync", 15)
        self.sentinels = [SentinelProcess(workdir, master.port) for _ in range(3)]
        # Each sentinel must know the replica and the other sentinels before a failover can be agreed.
        wait_for(
            lambda: all(
                s.client().sentinel_master(SERVICE).get("num-other-sentinels") == 2
                and s.client().sentinel_master(SERVICE).get("num-slaves") == 1
                for s in self.sentinels
            ),
            "sentinels did not discover each other and the replica",
            30,
        )

    def addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", s.port) for s in self.sentinels]

    def master(self) -> RedisServer:
        port = self.sentinels[0].master()[1]
        return next(server for server in self.servers if server.port == port)

    def in_place(self, old: RedisServer) -> bool:
        """Every sentinel names another master and it answers as one (the old one may not be reconfigured yet)."""
        try:
            ports = {s.master()[1] for s in self.sentinels}
            if len(ports) != 1 or old.port in ports:
                return False
            new = next(server for server in self.servers if server.port in ports)
            if new.client().info("replication")["role"] != "master":
                return False
            return True
        except redis.RedisError:
            return False

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()


@pytest.fixture
def deployment(tmp_path):
    running = Deployment(tmp_path)
    yield running
    running.stop()


@pytest.fixture
def sentinel_caches(deployment, make_cache):
    """Two caches ("processes") on the deployment, through the sentinels, as a django-redis user configures it."""

    def build():
        return make_cache(
            location=f"redis://{SERVICE}/0", KEY_PREFIX="sentinel", options={"SENTINELS": deployment.addresses()}, clear_after=False
        )

    return build(), build()


class History:
    """Versioned writes and reads from several threads, recorded for ``tests.history.checker``."""

    def __init__(self, caches) -> None:
        from django.core.signals import request_started

        self.caches = caches
        self.events: list = []
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._request_started = request_started
        self.threads = [threading.Thread(target=self._write)] + [threading.Thread(target=self._read, args=(c,)) for c in caches]

    def _record(self, *event) -> None:
        with self._lock:
            self.events.append(list(event))

    def _guarded(self, call):
        try:
            return call()
        except BaseException as exc:  # the property under test: nothing reaches the caller
            with self._lock:
                self.errors.append(exc)
            return None

    def _write(self) -> None:
        version = 0
        while not self.stop.is_set():
            version += 1
            key = KEYS[(version // 2) % len(KEYS)]  # every key written through both caches in turn
            cache = self.caches[version % 2]
            start = time.monotonic()
            self._guarded(lambda: cache.set(key, version))
            self._record("w", key, version, start, time.monotonic(), version % 2)
            time.sleep(0.002)

    def _read(self, cache) -> None:
        worker = 10 + self.caches.index(cache)
        while not self.stop.is_set():
            for key in KEYS:
                start = time.monotonic()
                self._request_started.send(sender=__name__)  # a read is one request: read-your-writes as in a real one
                value = self._guarded(lambda: cache.get(key))
                self._record("r", key, value, start, time.monotonic(), worker)
            time.sleep(0.001)

    def __enter__(self) -> History:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


class AsyncHistory(History):
    """History's writer and readers as coroutines on one event loop (a thread of its own): the async API, same checker."""

    def __init__(self, caches) -> None:
        super().__init__(caches)
        self.threads = [threading.Thread(target=lambda: asyncio.run(self._run()))]

    async def _run(self) -> None:
        await asyncio.gather(self._awrite(), *(self._aread(cache) for cache in self.caches))

    async def _aguarded(self, awaitable):
        try:
            return await awaitable
        except BaseException as exc:  # the property under test: nothing reaches the caller
            with self._lock:
                self.errors.append(exc)
            return None

    async def _awrite(self) -> None:
        version = 0
        while not self.stop.is_set():
            version += 1
            key = KEYS[(version // 2) % len(KEYS)]
            cache = self.caches[version % 2]
            start = time.monotonic()
            await self._aguarded(cache.aset(key, version))
            self._record("w", key, version, start, time.monotonic(), version % 2)
            await asyncio.sleep(0.002)

    async def _aread(self, cache) -> None:
        worker = 10 + self.caches.index(cache)
        while not self.stop.is_set():
            for key in KEYS:
                start = time.monotonic()
                await self._request_started.asend(sender=__name__)  # as Django's ASGI handler starts a request
                value = await self._aguarded(cache.aget(key))
                self._record("r", key, value, start, time.monotonic(), worker)
            await asyncio.sleep(0.001)


def assert_consistent_after(history: History, in_place_at: float) -> None:
    assert history.errors == [], f"{len(history.errors)} calls raised to their caller, first: {history.errors[0]!r}"
    verdict = check(history.events)
    assert verdict.impossible == []
    late = [stale for stale in verdict.stale if stale.read.start >= in_place_at]
    assert late == [], f"{len(late)} stale reads after the new master was in place, first: {late[0]}"
    reads_after = [e for e in history.events if e[0] == "r" and e[3] >= in_place_at and e[2] is not None]
    assert len(reads_after) > 50, "too few hits after the failover to judge anything"


def fail_over(deployment: Deployment, how: str) -> float:
    """Fail the master over; the monotonic time at which the new one was in place."""
    old = deployment.master()
    if how == "command":
        # What keeps a master that is being failed over from taking writes the
        # new one never sees (docs/consistency.md#redis-sentinel): with it, the
        # old master refuses writes (NOREPLICAS) once the new one leaves it.
        old.client().config_set("min-replicas-to-write", 1)
        deployment.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", SERVICE)
    else:
        old.stop()
    wait_for(lambda: deployment.in_place(old), "the sentinels did not put a new master in place", 30)
    return time.monotonic()


def settled(deployment: Deployment, old: RedisServer) -> bool:
    """The failover is over: the old master is dead or reconfigured as a replica (a write then lands, not held)."""
    try:
        return old.process is None or old.client().info("replication")["role"] == "slave"
    except redis.RedisError:
        return False


@pytest.mark.parametrize("api", [History, AsyncHistory], ids=["sync", "async"])
@pytest.mark.parametrize("how", ["command", "kill"])
def test_failover_raises_nothing_and_serves_nothing_stale_once_the_new_master_is_in_place(deployment, sentinel_caches, how, api, caplog):
    """Both APIs: set/get, and aset/aget awaited on redis.asyncio's Sentinel pool."""
    first, second = sentinel_caches
    first.set("warm", 1)
    assert second.get("warm") == 1
    caplog.set_level(logging.WARNING)
    old = deployment.master()
    with api(sentinel_caches) as history:
        time.sleep(0.5)
        in_place_at = fail_over(deployment, how)
        wait_for(lambda: settled(deployment, old), "Sentinel did not reconfigure the old master", 30)
        wait_for(lambda: first.l2_trusted() and second.l2_trusted(), "the caches did not reach the new master", 15)
        time.sleep(1.5)
    assert_consistent_after(history, in_place_at)
    messages = [record.getMessage() for record in caplog.records]
    # The breaker does not flap while the old master refuses writes but answers PINGs (a few closes per process at most).
    assert sum("circuit closed" in m for m in messages) <= 6, messages
    assert not [m for m in messages if "of pipeline caused error" in m], "a log line quoted a command's arguments"
    # Both caches now write and read through the new master, and hear each other there.
    first.set("after", "x")
    wait_for(lambda: second.get("after") == "x", "a write after the failover did not reach the other process", 5)
    new = deployment.master()
    assert new.client().get("sentinel:1:after") is not None

    async def after_async() -> object:
        await first.aset("after-async", "y")
        second._state.forget_all_local()
        return await second.aget("after-async")

    assert asyncio.run(after_async()) == "y"


def test_the_listener_follows_the_master(deployment, sentinel_caches):
    """Coherence after a failover: the L1 of one process drops what another wrote through the new master."""
    first, second = sentinel_caches
    first.set("k", "v1")
    assert second.get("k") == "v1" and second.get("k") == "v1"  # held in second's L1
    old = deployment.master()
    fail_over(deployment, "command")
    wait_for(lambda: settled(deployment, old), "Sentinel did not reconfigure the old master", 30)
    wait_for(lambda: first.l2_trusted() and second.l2_trusted() and second._state.listener.ready, "caches did not recover", 15)
    first.set("k", "v2")
    wait_for(lambda: second.get("k") == "v2", "second kept serving its L1 copy", 3)
    listener_url = second._state.listener.endpoints
    assert type(listener_url).__name__ == "SentinelMaster"


def test_the_async_api_reaches_the_master_through_the_sentinels(sentinel_caches):
    """``aset``/``aget`` on a Sentinel cache, awaited on redis.asyncio through the sentinels: no worker thread in between."""
    from concurrent.futures import ThreadPoolExecutor

    from velro_cache.tiers import aredis

    first, second = sentinel_caches

    async def write_then_read() -> tuple[object, str]:
        # Every thread the loop could hop to is busy for the whole call: an L2
        # call made in a thread would wait behind them and miss the deadline.
        loop = asyncio.get_running_loop()
        blocker = threading.Event()
        pool = ThreadPoolExecutor(1)
        loop.set_default_executor(pool)
        loop.run_in_executor(None, blocker.wait)
        try:
            await asyncio.wait_for(first.aset("async-k", "through sentinel"), 5)
            second._state.forget_all_local()  # read from Redis, not an L1
            value = await asyncio.wait_for(second.aget("async-k"), 5)
            return value, type(aredis.tier_for(second._l2, second.options).client.connection_pool).__name__
        finally:
            blocker.set()

    assert asyncio.run(write_then_read()) == ("through sentinel", "AsyncBlockingSentinelPool")
    assert second._state.stats.snapshot()["l2_errors"] == 0


# -- settings: django-redis's shape, and what is refused (no servers needed) -------------------------

SENTINELS = [("127.0.0.1", 26379), ("127.0.0.1", 26380)]


@pytest.mark.parametrize(
    ("location", "options", "expected_id"),
    [
        ("redis://mymaster/0", {"SENTINELS": []}, "velro_cache.E061"),
        ("redis://mymaster/0", {"SENTINELS": ["127.0.0.1:26379"]}, "velro_cache.E061"),
        ("redis://mymaster/0", {"SENTINELS": [("127.0.0.1", "26379")]}, "velro_cache.E061"),
        ("redis://mymaster:6379/0", {"SENTINELS": SENTINELS}, "velro_cache.E062"),
        ("unix:///tmp/redis.sock", {"SENTINELS": SENTINELS}, "velro_cache.E062"),
        (["redis://mymaster/0", "redis://other/0"], {"SENTINELS": SENTINELS}, "velro_cache.E062"),
        ("redis://mymaster/0", {"SENTINELS": SENTINELS, "SENTINEL_KWARGS": {"pasword": "x"}}, "velro_cache.E063"),
        ("redis://mymaster/0", {"SENTINEL_KWARGS": {"password": "x"}}, "velro_cache.E063"),
        ("redis://mymaster/0", {"SENTINEL": SENTINELS}, "velro_cache.E060"),  # a misspelling is an error, never a cache without Redis
    ],
)
def test_bad_sentinel_settings_are_check_errors(location, options, expected_id):
    from velro_cache.options import parse_options

    problems = parse_options(location, options).errors
    assert expected_id in {problem.id for problem in problems}


def test_a_sentinel_url_is_refused_with_the_way_to_say_it():
    from velro_cache.options import parse_options

    (problem,) = parse_options("sentinel://127.0.0.1:26379/mymaster", {}).errors
    assert problem.id == "velro_cache.E001" and "OPTIONS['SENTINELS']" in problem.hint


def test_django_redis_sentinel_settings_are_accepted():
    from velro_cache.options import parse_options

    parsed = parse_options("redis://mymaster/2", {"SENTINELS": SENTINELS, "SENTINEL_KWARGS": {"password": "s3"}})
    assert parsed.errors == []
    assert parsed.sentinels == tuple(SENTINELS) and dict(parsed.sentinel_kwargs) == {"password": "s3"}
    hash(parsed)  # one process state per configuration (tiers.process.state_for)


def test_a_misconfigured_sentinel_cache_refuses_every_call():
    from django.core.exceptions import ImproperlyConfigured

    from velro_cache.backends import TieredCache

    cache = TieredCache("redis://mymaster:6379/0", {"OPTIONS": {"SENTINELS": SENTINELS}})
    with pytest.raises(ImproperlyConfigured, match="E062"):
        cache.get("k")


@pytest.mark.parametrize(
    "other",
    [{"SENTINELS": SENTINELS[:1]}, {"SENTINELS": SENTINELS, "SENTINEL_KWARGS": {"password": "s3"}}],
    ids=["sentinels", "sentinel_kwargs"],
)
def test_a_different_sentinel_setting_gets_a_state_of_its_own(other):
    """As every option does (test_process_state.py): its pools reach other sentinels, or with other credentials."""
    from velro_cache.options import parse_options
    from velro_cache.tiers.process import discard, state_for

    base, changed = parse_options("redis://mymaster/0", {"SENTINELS": SENTINELS}), parse_options("redis://mymaster/0", other)
    assert changed.errors == []
    first, second = state_for(base), state_for(changed)
    try:
        assert first is not second
        assert first.l2.client.connection_pool is not second.l2.client.connection_pool
    finally:
        discard(first)
        discard(second)
