"""Read-your-writes at request boundaries (issue 10, item 5): no request sees a value from before a write that returned.

A request that starts after another process's write returned never sees the value from before it.

Real OS processes (``tests.cache_worker``) on one Redis: a writer changes a
key on one of the write paths and returns; at once a reader process, kept
busy by threads that only compute (so its listener thread waits for the GIL),
starts a "request" (Django's ``request_started``, as the WSGI/ASGI handlers
send it) and reads the key, which it held in L1 before the write. Every round
must see the new state. Without the request boundary (a plain read, outside
any request), the same rounds show what plain code may see.

The mechanism itself is attacked in one process with a TCP proxy: the
reader's subscription is made silent so the invalidation cannot arrive, and
the request must then not serve its L1 copy.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from tests.cache_worker import Worker
from tests.settings import redis_url
from tests.support import eventually
from tests.tcp_proxy import SilencingProxy
from velro_cache.tiers import process

pytestmark = pytest.mark.django_db(databases=[])

ROUNDS = 40
# path -> what a read after it may return (None: the key is gone)
PATHS = {"set": "new", "set_many": "new", "delete": None, "delete_many": None, "clear": None, "incr_version": None}


@pytest.fixture
def workers():
    prefix = f"ryw-{uuid.uuid4().hex[:8]}"
    writer, reader = Worker(redis_url(13), prefix), Worker(redis_url(13), prefix)
    reader.send(op="busy", threads=1)
    assert reader.receive() is True
    yield writer, reader
    writer.stop()
    reader.stop()


def call(worker, **command):
    worker.send(**command)
    return worker.receive()


def stale_rounds(writer, reader, path: str, *, request: str | None) -> int:
    """Rounds in which the reader, right after the writer's call returned, served the value from before it."""
    stale = 0
    for number in range(ROUNDS):
        key, old = f"ryw:{path}:{number}", f"old-{number}"
        call(writer, op="write", path="set", key=key, value=old)
        assert eventually(lambda key=key, old=old: call(reader, op="get", key=key, request="wsgi") == old)
        assert call(reader, op="get", key=key) == old  # now in the reader's L1
        call(writer, op="write", path=path, key=key, value=f"new-{number}")
        seen = call(reader, op="get", key=key, request=request)
        stale += seen == old
    return stale


# WSGI: the request's PING goes out and its first L1 read waits for the PONG; ASGI: the signal waits for it.
HANDLERS = ("wsgi", "asgi")


@pytest.mark.parametrize("handler", HANDLERS)
@pytest.mark.parametrize("path", sorted(PATHS))
def test_a_request_after_a_write_in_another_process_never_sees_the_old_value(workers, path, handler):
    writer, reader = workers
    assert stale_rounds(writer, reader, path, request=handler) == 0


@pytest.mark.parametrize("handler", HANDLERS)
def test_get_or_set_in_a_request_after_a_delete_loads_again(workers, handler):
    writer, reader = workers
    for number in range(ROUNDS):
        key = f"ryw:gos:{number}"
        call(writer, op="write", path="set", key=key, value="old")
        assert eventually(lambda key=key: call(reader, op="get", key=key, request=handler) == "old")
        call(writer, op="write", path="delete", key=key)
        assert call(reader, op="get_or_set", key=key, value="loaded", request=handler) == "loaded"


@pytest.fixture
def proxy(own_redis):
    proxy = SilencingProxy(own_redis.port)
    yield proxy
    proxy.close()


def test_a_request_whose_confirmation_cannot_arrive_reads_no_l1(own_redis, proxy, tiered_on):
    writer, reader = tiered_on(own_redis.url()), tiered_on(proxy.url(), STALENESS_BOUND=5)
    writer.set("k", "old", None)
    assert eventually(lambda: reader.get("k") == "old")
    proxy.silence()  # the invalidation below cannot reach the reader; its L1 trust (5 s) outlives the test
    writer.set("k", "new", None)
    assert reader.get("k") == "old"  # the attack is real: outside a request, L1 trails the write
    assert process.confirm_current(timeout=0.05) is False
    assert reader.get("k") != "old"


def test_a_request_waits_for_a_late_invalidation(own_redis, proxy, tiered_on):
    writer, reader = tiered_on(own_redis.url()), tiered_on(proxy.url(), STALENESS_BOUND=5)
    writer.set("k", "old", None)
    assert eventually(lambda: reader.get("k") == "old")
    proxy.silence()
    writer.set("k", "new", None)
    late = threading.Timer(0.05, proxy.resume)  # the message arrives while the request waits
    late.start()
    try:
        assert process.confirm_current(timeout=2) is True
        assert reader.get("k") == "new"
    finally:
        late.cancel()


def hold_in_l1(writer, reader) -> None:
    """``k`` = "old" in the reader's L1, with every message published before (the set's own drop) applied,
    so none arrives later to drop it while the proxy is silent."""
    writer.set("k", "old", None)
    assert eventually(lambda: reader.get("k") == "old")
    assert process.confirm_current(timeout=2)
    assert eventually(lambda: reader.get("k") == "old")


def test_a_wsgi_request_start_does_not_wait_and_its_first_l1_read_does(own_redis, proxy, tiered_on):
    """The lazy path: the PING is sent at the request's start, the wait moves to the first L1 read that needs it."""
    from django.core.signals import request_started

    writer, reader = tiered_on(own_redis.url()), tiered_on(proxy.url(), STALENESS_BOUND=2)
    hold_in_l1(writer, reader)
    proxy.silence()  # neither the invalidation nor the PONG can arrive
    writer.set("k", "new", None)
    assert reader.get("k") == "old"  # outside a request, L1 trails the write
    started = time.monotonic()
    request_started.send(sender=None, environ={})
    assert time.monotonic() - started < 1.0  # the start did not wait the bound (2 s) for a PONG
    assert reader.get("k") != "old"  # the L1 read waited the rest of the bound, then went to Redis (silent too)


def test_the_first_l1_read_of_a_wsgi_request_waits_for_a_late_invalidation(own_redis, proxy, tiered_on):
    writer, reader = tiered_on(own_redis.url()), tiered_on(proxy.url(), STALENESS_BOUND=5)
    hold_in_l1(writer, reader)
    proxy.silence()
    writer.set("k", "new", None)
    assert reader.get("k") == "old"  # held in L1, which trails the write
    process.begin_current()
    late = threading.Timer(0.05, proxy.resume)  # the message, then the PONG, arrive while the read waits
    late.start()
    try:
        assert reader.get("k") == "new"
        assert reader._state.store.trusted_until > time.monotonic()  # trusted again: later reads are L1 hits
    finally:
        late.cancel()


def test_read_your_writes_must_be_a_bool():
    from velro_cache.conf import parse_settings

    parsed = parse_settings({"READ_YOUR_WRITES": "yes"})
    assert [p.id for p in parsed.problems] == ["velro_cache.E051"] and parsed.READ_YOUR_WRITES is True
    assert parse_settings({"READ_YOUR_WRITES": False}).READ_YOUR_WRITES is False


def test_turned_off_a_request_confirms_nothing(settings, monkeypatch):
    from django.core.signals import request_started

    from velro_cache import freshness

    calls = []
    monkeypatch.setattr(freshness, "confirm_current", lambda: calls.append(1))
    freshness.connect()
    request_started.send(sender=None)
    settings.VELRO_CACHE = {"READ_YOUR_WRITES": False}
    request_started.send(sender=None)
    assert calls == [1]
