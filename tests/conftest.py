"""Shared fixtures: TieredCache instances on the real Redis or Redis Cluster, each test in its own key prefix."""

from __future__ import annotations

import itertools
import os
import uuid

import pytest

from tests.redis_cluster import cluster_urls, own_cluster, redis_cluster, stop_shared_cluster  # noqa: F401
from tests.settings import redis_url

BACKEND_TEST_DB = 12
_l1_sizes = itertools.count(64 * 1024 * 1024)

# The modes of the one ``cache`` fixture: which L2 sits under the L1.
L1_ONLY, L1_REDIS, L1_CLUSTER = "l1", "l1+redis", "l1+cluster"


def l2_location(mode: str) -> str | list[str] | None:
    """The LOCATION of a mode; the cluster (shared by the whole run) starts on first use."""
    if mode == L1_ONLY:
        return None
    if mode == L1_REDIS:
        return redis_url(BACKEND_TEST_DB)
    if mode == L1_CLUSTER:
        return cluster_urls()
    raise ValueError(f"unknown cache mode {mode!r}")


@pytest.fixture
def make_cache():
    """Build TieredCache instances; each call gets its own L1 (its own "process").

    Instances built with different L1 budgets have separate L1 stores, which is
    how one test process plays several worker processes against one real L2.
    ``mode`` picks the L2 (single Redis by default, none with ``l2=False``);
    ``location`` names another one (a test's own server or cluster);
    ``like=cache`` builds another "process" on that cache's L2 and key prefix.
    """
    from velro_cache.backends import TieredCache
    from velro_cache.tiers.process import discard

    prefix = f"t{os.getpid()}-{uuid.uuid4().hex[:8]}"
    built: list[tuple[TieredCache, bool]] = []
    locations: dict[int, str | list[str] | None] = {}

    def build(
        *,
        l2: bool = True,
        mode: str = L1_REDIS,
        location: str | list[str] | None = None,
        like: TieredCache | None = None,
        max_bytes: int | None = None,
        options: dict | None = None,
        clear_after: bool = True,
        **params,
    ) -> TieredCache:
        opts = {"L1": {"MAX_BYTES": max_bytes or next(_l1_sizes)}}
        for name, value in (options or {}).items():
            if name == "L1":
                opts["L1"].update(value)
            else:
                opts[name] = value
        if like is not None:
            location = locations[id(like)]
            params.setdefault("KEY_PREFIX", like.key_prefix)
        elif location is None:
            location = l2_location(mode if l2 else L1_ONLY)
        params.setdefault("KEY_PREFIX", prefix)
        cache = TieredCache(location, {"OPTIONS": opts, **params})
        built.append((cache, clear_after))
        locations[id(cache)] = location
        return cache

    yield build
    for cache, clear_after in built:
        if clear_after:
            cache.clear()
        discard(cache._state)


@pytest.fixture(params=[L1_ONLY, L1_REDIS, L1_CLUSTER])
def cache_mode(request) -> str:
    """The backend contract runs on every tier stack: L1 alone, over Redis, over a Redis Cluster."""
    return request.param


@pytest.fixture
def cache(cache_mode, make_cache):
    """One TieredCache per mode of ``cache_mode``; ``make_cache(like=cache)`` gives it a sibling process."""
    return make_cache(mode=cache_mode)


@pytest.fixture(params=[L1_REDIS, L1_CLUSTER])
def l2_cache(request, make_cache):
    """The contract of the L2 itself: a TieredCache over Redis, and over a Redis Cluster."""
    return make_cache(mode=request.param)


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
def tiered_on(make_cache):
    """``make_cache`` on a Redis of the test's own (``own_redis``, a cluster): a separate "process" per call.

    Its key prefix defaults to "fault", so a test can read ``fault:1:<key>``
    behind the cache; nothing is cleared afterwards, as the server may be dead.
    """

    def build(url: str | list[str], *, prefix: str = "fault", **options):
        """``url`` is one Redis URL, or a cluster's startup node URLs."""
        return make_cache(location=url, KEY_PREFIX=prefix, options=options, clear_after=False)

    return build


@pytest.fixture
def own_cache(settings):
    """The default cache under a key prefix of the test's own, so no other test's clear() reaches it."""
    from django.core.cache import caches

    default = settings.CACHES["default"]
    settings.CACHES = {**settings.CACHES, "default": {**default, "KEY_PREFIX": f"inval-{uuid.uuid4().hex[:8]}"}}
    yield caches["default"]
    caches["default"].clear()


def pytest_unconfigure(config):
    """The shared cluster's nodes are ours (started on first use): kill them by pid when pytest ends."""
    stop_shared_cluster()
