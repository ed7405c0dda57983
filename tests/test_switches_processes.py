"""A runtime switch reaches every worker process within a second, forked ones too; a bad value reaches none.

The workers are real OS processes (this module run as ``python -m
tests.test_switches_processes URL``), each a Django process whose
``AppConfig.ready`` started the switch refresher, so nothing here reaches
into them except over their stdin: they watch their own view of a switch
and report when it changed, and they write through their own cache so the
test can check what Redis holds.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time

import pytest
import redis
from django.test import override_settings

from tests.settings import redis_url
from tests.support import WorkerProcess, serve_commands
from velro_cache import switches
from velro_cache.telemetry import store

REDIS_DB = 9
URL = redis_url(REDIS_DB)
MARGIN = 0.5  # seconds of scheduling slack on a loaded two-core machine, beyond the periodic re-read


def _watch(name: str, want: float, limit: float = 10.0) -> float | None:
    """Poll this process's view of a switch until it is ``want``; the wall time it was first seen (None: never)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if switches.percent(name) == want:
            return time.time()
        time.sleep(0.001)
    return None


def _watch_in_child(name: str, want: float, results: multiprocessing.Queue) -> None:
    results.put((os.getpid(), _watch(name, want)))


def _handle(command: dict) -> object:
    from django.core.cache import cache

    op = command["op"]
    if op == "percent":
        return switches.percent(command["name"])
    if op == "watch":
        return _watch(command["name"], command["want"])
    if op == "fork_and_watch":
        # A child forked after start-up, as gunicorn forks its workers: it must refresh on its own.
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        child = context.Process(target=_watch_in_child, args=(command["name"], command["want"], results))
        child.start()
        os.write(sys.stdout.fileno(), b'{"armed": true}\n')
        pid, seen = results.get(timeout=15)
        child.join(timeout=5)
        return {"pid": pid, "seen": seen, "parent": os.getpid()}
    if op == "set":
        cache.set(command["key"], command["value"])
        return cache.make_key(command["key"])
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    import django
    from django.conf import settings

    settings.configure(
        SECRET_KEY="velro-cache-tests",
        CACHES={
            "default": {
                "BACKEND": "velro_cache.backends.TieredCache",
                "LOCATION": sys.argv[1],
                "KEY_PREFIX": "switches",
                "OPTIONS": {"COMPRESS_MIN_BYTES": 64},
            }
        },
        INSTALLED_APPS=["velro_cache"],
    )
    django.setup()
    serve_commands(_handle, ready=os.getpid())


# -- the test side ---------------------------------------------------------------------------------


@pytest.fixture
def hash_client():
    client = redis.Redis.from_url(URL)
    client.delete(switches.HASH_KEY)
    yield client
    client.delete(switches.HASH_KEY)


@pytest.fixture(scope="module")
def workers():
    """Three workers for the module (each test changes switches the others do not look at)."""
    redis.Redis.from_url(URL).flushdb()
    started = [WorkerProcess("tests.test_switches_processes", URL) for _ in range(3)]
    for worker in started:
        worker.wait_ready()
    yield started
    for worker in started:
        worker.stop()


def _codec(client: redis.Redis, full: str) -> int:
    from django.conf import settings

    from velro_cache.serializers import Serializer, derive_signing_key

    serializer = Serializer(signing_key=derive_signing_key(settings.SECRET_KEY))
    return serializer.unframe(client.get(full), key=full).codec


def test_a_change_reaches_every_worker_within_a_second_and_they_act_on_it(workers, hash_client):
    from velro_cache.serializers import _LZ4_CODECS

    value = {"text": "velro " * 100}
    assert [worker.call(op="percent", name="compression") for worker in workers] == [100.0] * 3
    assert _codec(hash_client, workers[0].call(op="set", key="gen:1:meta", value=value)) in _LZ4_CODECS  # the control
    for worker in workers:
        worker.send(op="watch", name="compression", want=0.0)
    asked = time.time()
    with override_settings(CACHES={"default": {"BACKEND": "velro_cache.backends.TieredCache", "LOCATION": URL}}):
        store.reset_clients()
        try:
            switches.set("compression", "off")  # from this process: the hash, and the nudge
        finally:
            store.reset_clients()
    written = time.time()
    seen = [worker.receive() for worker in workers]
    assert all(moment is not None and asked <= moment <= written + 1.0 for moment in seen), (asked, seen)
    for number, worker in enumerate(workers):
        assert _codec(hash_client, worker.call(op="set", key=f"gen:{number + 2}:meta", value=value)) not in _LZ4_CODECS


def test_a_forked_worker_refreshes_on_its_own_and_a_value_written_by_hand_is_read_periodically(workers, hash_client):
    parent = workers[0]
    parent.send(op="fork_and_watch", name="warming", want=40.0)
    parent.expect("armed")
    written = time.time()
    hash_client.hset(switches.HASH_KEY, "warming", "40")  # by hand: no nudge, the periodic re-read finds it
    reply = parent.receive()
    assert reply["pid"] != reply["parent"]
    assert reply["seen"] is not None and reply["seen"] <= written + switches.REFRESH_EVERY + MARGIN, reply


def test_a_garbage_value_is_refused_by_every_worker_which_keeps_the_last_good_one(workers, hash_client):
    hash_client.hset(switches.HASH_KEY, "l1", "25")
    for worker in workers:
        assert worker.call(op="watch", name="l1", want=25.0) is not None
    hash_client.hset(switches.HASH_KEY, "l1", "a quarter")
    hash_client.hset(switches.HASH_KEY, "warming", "off")  # written after: once seen, the garbage was read too
    for worker in workers:
        assert worker.call(op="watch", name="warming", want=0.0) is not None
        assert worker.call(op="percent", name="l1") == 25.0
    hash_client.hset(switches.HASH_KEY, "warming", "on")  # one more refresh that reads the garbage again
    for worker in workers:
        assert worker.call(op="watch", name="warming", want=100.0) is not None
        assert worker.call(op="percent", name="l1") == 25.0
        assert worker.stderr().count("refusing runtime switch value b'a quarter' for 'l1'") == 1  # warned once


if __name__ == "__main__":
    main()
