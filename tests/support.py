"""What tests and benchmarks share: polling, threads that fail their test, worker processes.

One module so each of these exists once. It imports neither pytest nor
Django at the top, because benchmark worker processes import it before they
configure Django themselves.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


# -- polling ----------------------------------------------------------------------------------


def eventually(check: Callable[[], T], limit: float = 5.0, interval: float = 0.005) -> T:
    """Poll ``check`` until it returns something truthy, or ``limit`` seconds pass.

    Pub/sub, listeners and breakers act asynchronously, so a test can only wait
    for their effect with a bound; the bound is generous so a slow machine does
    not fail a test that is right. Returns the last result (falsy on time-out).
    """
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    return check()


def wait_for(probe: Callable[[], Any], failure: str, seconds: float = 20, until_dead: subprocess.Popen | None = None) -> None:
    """Poll a server's ``probe`` until it answers truthily; raise ``failure`` after ``seconds``.

    For servers the tests start: connection errors while it boots are
    expected, and a process that exited (``until_dead``) ends the wait at once
    with its status instead of the whole timeout.
    """
    import redis

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if until_dead is not None and until_dead.poll() is not None:
            raise RuntimeError(f"{failure}: it exited with status {until_dead.returncode}")
        try:
            if probe():
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(failure)


# -- threads ------------------------------------------------------------------------------------


class Background:
    """One helper thread whose exception fails the test that joins it.

    A plain ``threading.Thread`` keeps neither its result nor its exception
    (pytest only warns about the exception; pyproject.toml makes that warning
    an error, as a net). ``join`` here returns the result or re-raises the
    exception in the test itself, and a thread still running after the bound
    is an error too, never a silent pass.
    """

    def __init__(self, target: Callable[[], Any], *, name: str | None = None) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._target = target
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.result = self._target()
        except BaseException as exc:  # noqa: BLE001 - re-raised by join()
            self.error = exc

    def join(self, timeout: float = 30) -> Any:
        """Wait for the thread; return its result or raise what it raised."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"helper thread {self._thread.name} still running after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result


def run_threads(targets: Iterable[Callable[[], T]], timeout: float = 60) -> list[T]:
    """Run each target on its own thread; their results in order, or the first exception."""
    threads = [Background(target) for target in targets]
    return [thread.join(timeout) for thread in threads]


class Arrivals:
    """Counts threads arriving at a point; ``wait`` blocks until all ``count`` have.

    A loader that waits here before returning keeps its flight open until every
    contender has started its own call: the overlap is certain, not hoped for.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self._arrived = 0
        self._lock = threading.Lock()
        self._all = threading.Event()

    def arrive(self) -> None:
        with self._lock:
            self._arrived += 1
            if self._arrived >= self.count:
                self._all.set()

    def wait(self, timeout: float = 10) -> None:
        if not self._all.wait(timeout):
            raise AssertionError(f"only {self._arrived} of {self.count} threads arrived within {timeout} s")


class AsyncArrivals:
    """``Arrivals`` for the coroutines of one event loop: ``arrive`` counts, ``await wait()`` until all have.

    A loader awaiting ``wait`` stays open until every coroutine has made its
    call, so they overlap by construction rather than by a sleep's length.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self._arrived = 0
        self._all = asyncio.Event()

    def arrive(self) -> None:
        self._arrived += 1
        if self._arrived >= self.count:
            self._all.set()

    async def wait(self, timeout: float = 10) -> None:
        try:
            await asyncio.wait_for(self._all.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"only {self._arrived} of {self.count} coroutines arrived within {timeout} s") from None


def run_together(count: int, target: Callable[[int], T], timeout: float = 60) -> list[T]:
    """``count`` threads released by one barrier, so they really overlap; results in order."""
    barrier = threading.Barrier(count)

    def released(index: int) -> Callable[[], T]:
        def run() -> T:
            barrier.wait(timeout)
            return target(index)

        return run

    return run_threads([released(index) for index in range(count)], timeout)


# -- looking behind a cache ---------------------------------------------------------------------------


def behind(cache: Any) -> Any:
    """The raw redis-py client of a cache's L2 (``None`` for L1 only), for checking what Redis holds.

    On a cluster it is the RedisCluster itself, not the cache's wrapper whose
    ``ping`` asks every primary.
    """
    if cache._l2 is None:
        return None
    client = cache._l2.client
    return client.real() if hasattr(client, "real") else client


def is_cluster(cache: Any) -> bool:
    """Whether the cache's L2 is a Redis Cluster (keys then spread over its primaries)."""
    from velro_cache.tiers.cluster import ClusterRedisTier

    return isinstance(cache._l2, ClusterRedisTier)


def announce_echoes(cache: Any, key: str) -> int:
    """The extra round trip a script's write of ``key`` costs to be heard: 1 on a cluster when the key's
    node is not the one the listener subscribes through (the PUBLISH is echoed there), else 0."""
    if not is_cluster(cache):
        return 0
    from velro_cache.tiers.cluster import echo_needed

    tier = cache._l2
    return int(echo_needed(tier._subscribed_node(), tier.client.get_node_from_key(cache.make_key(key))))


def keys_on_every_primary(cache: Any, client: Any, per_node: int = 4, pattern: str = "gen:{}:meta") -> list[str]:
    """Cache keys whose final keys land on every primary of a cluster, ``per_node`` each."""
    primaries = {node.name for node in client.get_primaries()}
    by_node: dict[str, list[str]] = {name: [] for name in primaries}
    number = 0
    while not all(len(keys) == per_node for keys in by_node.values()):
        key = pattern.format(number)
        node = client.get_node_from_key(cache.make_key(key)).name
        if len(by_node[node]) < per_node:
            by_node[node].append(key)
        number += 1
    return [key for keys in by_node.values() for key in keys]


def spread_keys(cache: Any, per_node: int = 2, pattern: str = "gen:{}:meta") -> list[str]:
    """Keys for a contract test: on a cluster, some on every primary; elsewhere as many plain ones."""
    if is_cluster(cache):
        return keys_on_every_primary(cache, behind(cache), per_node, pattern)
    return [pattern.format(number) for number in range(3 * per_node)]


# -- the whole API, for fault tests ------------------------------------------------------------------


def exercise_every_operation(cache: Any, keys: list[str]) -> dict[str, Any]:
    """Call the whole cache API on ``keys`` (at least three); any exception fails the test."""
    first, second, *rest = keys
    return {
        "get": [cache.get(key, "default") for key in keys],
        "get_many": cache.get_many(keys),
        "set": [cache.set(key, "v") for key in rest],
        "set_many": cache.set_many({key: "many" for key in keys}),
        "add": cache.add("new", "v"),
        "touch": cache.touch(first, 10),
        "delete": cache.delete(second),
        "delete_many": cache.delete_many(rest),
        "has_key": cache.has_key(first),
        "get_or_set": [cache.get_or_set(f"gs:{key}", "computed") for key in keys],
        "get_or_load": [cache.get_or_load(f"gl:{key}", lambda: "loaded") for key in keys],
        "clear": cache.clear(),
    }


# -- a site's caches, for the code that finds them by alias --------------------------------------


@contextmanager
def caches_in_force(config: dict[str, dict[str, Any]], flush: str | None = None, **more_settings: Any) -> Iterator[Any]:
    """``CACHES = config`` (and ``more_settings``) for the block, with every per-process reader of them starting over.

    The telemetry store's Redis clients and the switches' last read are kept
    per process; without a reset they would still talk to the previous
    ``CACHES``. ``flush`` (a Redis URL) is emptied before and after, and the
    default cache's L1 dropped, so one test never reads another's tokens; the
    client for it is what the block gets.
    """
    import redis
    from django.core.cache import caches
    from django.test import override_settings

    from velro_cache import switches
    from velro_cache.telemetry import store

    client = redis.Redis.from_url(flush) if flush else None
    if client is not None:
        client.flushdb()
    store.reset_clients()
    switches.reset()
    try:
        with override_settings(CACHES=config, **more_settings):
            if client is not None:
                caches["default"].clear()
            yield client
    finally:
        store.reset_clients()
        switches.reset()
        if client is not None:
            client.flushdb()


# -- processes ---------------------------------------------------------------------------------


def stop_process(process: subprocess.Popen, timeout: float = 20) -> int:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``; its exit status."""
    process.terminate()
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


class WorkerError(RuntimeError):
    """A worker process raised (its traceback is the message) or died."""


def serve_commands(handle: Callable[[dict[str, Any]], Any], ready: Any) -> None:
    """The worker side: announce ``ready``, then answer each JSON line on stdin with one on stdout.

    A command that raises is answered with its traceback and the worker keeps
    serving; the test side raises it, so the test fails with the worker's cause.
    """
    emit({"ready": ready})
    for line in sys.stdin:
        try:
            emit({"result": handle(json.loads(line))})
        except Exception:  # noqa: BLE001 - sent to the test, which raises it
            emit({"error": traceback.format_exc()})


def emit(payload: dict[str, Any]) -> None:
    """One JSON line to the test side, flushed at once (it may be waiting for it)."""
    print(json.dumps(payload), flush=True)


class WorkerProcess:
    """The test side of one ``python -m <module> <args>`` worker speaking JSON lines.

    The worker's stderr goes to a file, so when it dies (a crash, an import
    error) the exception raised here carries its traceback.
    """

    def __init__(self, module: str, *args: str, without_env: tuple[str, ...] = ()) -> None:
        env = {key: value for key, value in os.environ.items() if key not in without_env}
        env["PYTHONPATH"] = str(ROOT)
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            cwd=str(ROOT),
            env=env,
        )

    def wait_ready(self) -> Any:
        """Workers may start in parallel; this waits for one to say it is serving."""
        return self._line()["ready"]

    def send(self, **command: Any) -> None:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def expect(self, flag: str) -> None:
        """The next line is the signal ``flag`` (e.g. "armed": now watching), not a result."""
        reply = self._line()
        if not reply.get(flag):
            raise WorkerError(f"worker {self.process.pid} did not say {flag!r}: {reply}")

    def receive(self) -> Any:
        reply = self._line()
        if "error" in reply:
            raise WorkerError(f"worker {self.process.pid} raised:\n{reply['error']}")
        return reply["result"]

    def call(self, **command: Any) -> Any:
        self.send(**command)
        return self.receive()

    def _line(self) -> dict[str, Any]:
        line = self.process.stdout.readline()
        if not line:
            status = self.process.wait(timeout=10)
            raise WorkerError(f"worker {self.process.pid} exited with {status}:\n{self.stderr()}")
        return json.loads(line)

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-5000:]

    def stop(self) -> None:
        """Close its stdin (it exits when its input ends); a worker that exits badly is an error."""
        try:
            self.process.stdin.close()
            try:
                status = self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise WorkerError(f"worker {self.process.pid} did not exit:\n{self.stderr()}") from None
            if status != 0:
                raise WorkerError(f"worker {self.process.pid} exited with {status}:\n{self.stderr()}")
        finally:
            self._stderr.close()


# -- the example project, served by other processes -------------------------------------------------


def example_env(redis_url: str) -> dict[str, str]:
    """The environment a gunicorn (or manage.py) of the example project needs to use the test database and ``redis_url``."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "REDIS_URL": redis_url,
        "DJANGO_DEBUG": "0",
        "PYTHONPATH": str(ROOT),
    }


def start_gunicorn(*args: str, port: int, env: dict[str, str], stderr: Path, cwd: Path = ROOT) -> subprocess.Popen:
    """This venv's gunicorn with ``args`` (the app, options) on 127.0.0.1:``port``, its stderr kept in ``stderr`` for a failure message."""
    with open(stderr, "w") as err:
        return subprocess.Popen(
            [str(Path(sys.executable).with_name("gunicorn")), *args, "--bind", f"127.0.0.1:{port}"],
            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip


def example_cache_prefix() -> str:
    """The KEY_PREFIX the example settings derive from the database, so this process's cache is the workers' cache."""
    import hashlib

    from django.conf import settings

    db = settings.DATABASES["default"]
    identity = "|".join(str(v) for v in ("django.db.backends.postgresql", db["HOST"], db["PORT"], db["NAME"]))
    return f"velro-example:{hashlib.sha256(identity.encode()).hexdigest()[:8]}"


def save_after_generation_select(generation_id: int, new_prompt: str) -> tuple[Callable[..., Any], threading.Event]:
    """An execute wrapper and the event it sets: right after a SELECT of generation rows by id,
    another connection saves ``generation_id`` (its invalidation commits) before the reader stores.

    The write happens at that exact point, not after a sleep: the race a
    warm-up or preload must win is reproduced on every run.
    """
    from django.db import connection
    from studio.models import Generation

    done = threading.Event()

    def save_elsewhere() -> None:
        try:
            generation = Generation.objects.get(pk=generation_id)
            generation.prompt = new_prompt
            generation.save()
        finally:
            connection.close()

    def wrapper(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        result = execute(sql, params, many, context)
        if not done.is_set() and 'FROM "studio_generation"' in sql and "IN" in sql:
            done.set()
            Background(save_elsewhere, name="save-elsewhere").join(30)
        return result

    return wrapper, done


DASHBOARD_URL = "/admin/velro_cache/dashboard/"


def dashboard_account(name: str, *, staff: bool = True, perms: tuple[str, ...] = (), password: str = "secret-pw-1") -> Any:
    """A user holding ``perms`` of velro_cache's (``view_dashboard``, ``run_dashboard_actions``)."""
    from django.contrib.auth.models import Permission, User

    account = User.objects.create_user(name, password=password, is_staff=staff)
    account.user_permissions.set(Permission.objects.filter(content_type__app_label="velro_cache", codename__in=perms))
    return account


def dashboard_client(name: str, *, staff: bool = True, perms: tuple[str, ...] = ()) -> Any:
    """A test client logged in as a new ``dashboard_account``, checking CSRF as a browser's requests are checked."""
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(dashboard_account(name, staff=staff, perms=perms))
    return client


def post_dashboard_action(client: Any, data: dict[str, str], *, follow: bool = False) -> Any:
    """POST a dashboard action with the CSRF token the dashboard page gave ``client``."""
    token = client.get(DASHBOARD_URL).context["csrf_token"]
    return client.post(DASHBOARD_URL + "action/", {**data, "csrfmiddlewaretoken": str(token)}, follow=follow)


class RoundTrips:
    """Counts what this thread sends to Redis: one send is one round trip (a pipeline sends once)."""

    def __init__(self) -> None:
        self.sent = 0
        self._thread = threading.get_ident()

    def __enter__(self) -> RoundTrips:
        from redis.connection import AbstractConnection

        original = AbstractConnection.send_packed_command
        counter = self

        def counted(connection: Any, command: object, check_health: bool = True) -> None:
            if threading.get_ident() == counter._thread and not _is_sync_ping(command):
                counter.sent += 1
            original(connection, command, check_health)

        self._original = original
        AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        from redis.connection import AbstractConnection

        AbstractConnection.send_packed_command = self._original  # type: ignore[method-assign]


def _is_sync_ping(command: object) -> bool:
    """Read-your-writes' PING on the subscription (docs/consistency.md): one per request whatever it reads,
    sent only once the listener is subscribed, so counting it would count the listener's timing."""
    first = command[0] if isinstance(command, list) else command
    return isinstance(first, bytes) and b"\r\nPING\r\n" in first[:24]
