"""Shared fixtures: TieredCache instances on the real Redis, each test in its own key prefix."""

from __future__ import annotations

import itertools
import os
import uuid

import pytest
import redis

from tests.settings import REDIS_HOST, REDIS_PORT, redis_url

BACKEND_TEST_DB = 12
_l1_sizes = itertools.count(64 * 1024 * 1024)


@pytest.fixture
def redis_client() -> redis.Redis:
    """A plain client on the backend tests' database, for looking behind the cache."""
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=BACKEND_TEST_DB)
    yield client
    client.close()


@pytest.fixture
def make_cache():
    """Build TieredCache instances; each call gets its own L1 unless ``l1_of`` shares one.

    Instances built with different L1 budgets have separate L1 stores, which is
    how one test process plays several worker processes against one real Redis.
    """
    from velro_cache.backends import TieredCache

    prefix = f"t{os.getpid()}-{uuid.uuid4().hex[:8]}"
    built: list[TieredCache] = []

    def build(*, l2: bool = True, max_bytes: int | None = None, options: dict | None = None, **params) -> TieredCache:
        opts = {"L1": {"MAX_BYTES": max_bytes or next(_l1_sizes)}}
        for name, value in (options or {}).items():
            if name == "L1":
                opts["L1"].update(value)
            else:
                opts[name] = value
        params.setdefault("KEY_PREFIX", prefix)
        cache = TieredCache(redis_url(BACKEND_TEST_DB) if l2 else None, {"OPTIONS": opts, **params})
        built.append(cache)
        return cache

    yield build
    from velro_cache.tiers.process import discard

    for cache in built:
        cache.clear()
        discard(cache._state)


@pytest.fixture(params=["l1", "l1+l2"])
def cache(request, make_cache):
    """One TieredCache per mode: L1 only, and L1 over the real Redis."""
    return make_cache(l2=request.param == "l1+l2")


@pytest.fixture(scope="session")
def private_redis(tmp_path_factory):
    """A redis-server of our own on a free loopback port: its counters and faults are ours alone."""
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server this test alone may kill, pause, flush and restart."""
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.resume()
    server.stop()


@pytest.fixture
def tiered_on():
    """Build TieredCaches on a given Redis URL; each call is a separate "process" (own L1 and listener)."""
    from velro_cache.backends import TieredCache
    from velro_cache.tiers.process import discard

    built = []
    sizes = itertools.count(32 * 1024 * 1024)

    def build(url: str | list[str], *, prefix: str = "fault", **options):
        """``url`` is one Redis URL, or a cluster's startup node URLs."""
        cache = TieredCache(url, {"KEY_PREFIX": prefix, "OPTIONS": {"L1": {"MAX_BYTES": next(sizes)}, **options}})
        built.append(cache)
        return cache

    yield build
    for cache in built:
        discard(cache._state)


# --- Invalidation tests (issue 4) ---


@pytest.fixture
def own_cache(settings):
    """The default cache under a key prefix of the test's own, so no other test's clear() reaches it."""
    from django.core.cache import caches

    default = settings.CACHES["default"]
    settings.CACHES = {**settings.CACHES, "default": {**default, "KEY_PREFIX": f"inval-{uuid.uuid4().hex[:8]}"}}
    yield caches["default"]
    caches["default"].clear()


# --- end invalidation tests ---


# --- Redis Cluster tests ---
# The cluster starts on first use (test_django_contract needs its URLs at
# import time); its nodes are killed by pid when pytest ends.
from tests.redis_cluster import own_cluster, redis_cluster, stop_shared_cluster  # noqa: F401


def pytest_unconfigure(config):
    stop_shared_cluster()


# --- end Redis Cluster tests ---
