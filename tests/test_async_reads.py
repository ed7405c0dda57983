"""``acached_read``: the read API for coroutines, with the same entries, tokens and guarantees as ``cached_read``."""

from __future__ import annotations

import asyncio

import pytest

import velro_cache
from tests.support import AsyncArrivals
from velro_cache.reads import acached_read, cached_read

pytestmark = pytest.mark.django_db(databases=[])


async def test_32_coroutines_load_once_and_share_entries_with_the_sync_read(make_cache):
    cache = make_cache()
    runs = []
    arrivals = AsyncArrivals(32)

    async def load():
        runs.append(1)
        await arrivals.wait()  # the flight stays open until every coroutine has made its call
        return {"id": 7, "title": "dusk"}

    async def read():
        arrivals.arrive()
        return await acached_read(("generation", 7, "meta"), load, cache=cache)

    results = await asyncio.gather(*(read() for _ in range(32)))
    assert results == [{"id": 7, "title": "dusk"}] * 32
    assert len(runs) == 1
    # The same physical key as the sync read: no second load either way.
    sync_value = await asyncio.to_thread(cached_read, ("generation", 7, "meta"), lambda: runs.append("sync") or "other", cache=cache)
    assert sync_value == {"id": 7, "title": "dusk"} and runs == [1]


async def test_an_invalidation_retires_what_acached_read_stored(make_cache):
    cache = make_cache()
    runs = []

    def load():
        runs.append(1)
        return f"summary #{len(runs)}"

    key = ("generation", 9, "summary")
    assert await acached_read(key, load, cache=cache) == await acached_read(key, load, cache=cache) == "summary #1"
    await asyncio.to_thread(velro_cache.invalidate, prefixes=[("generation", 9)], cache=cache)
    assert await acached_read(key, load, cache=cache) == "summary #2"
    assert await acached_read(("team", 3, "roster"), load, tags=[("generation", 9)], cache=cache) == "summary #3"
    await asyncio.to_thread(velro_cache.invalidate, tags=[("generation", 9)], cache=cache)
    assert await acached_read(("team", 3, "roster"), load, tags=[("generation", 9)], cache=cache) == "summary #4"


async def test_a_zero_timeout_loads_every_time(make_cache):
    cache = make_cache()
    runs = []
    for _ in range(3):
        await acached_read(("generation", 1, "meta"), lambda: runs.append(1) or "v", timeout=0, cache=cache)
    assert len(runs) == 3


async def test_other_backends_use_djangos_async_api(settings):
    from django.core.cache import caches

    settings.CACHES = {**settings.CACHES, "locmem": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    runs = []
    key = ("generation", 5, "meta")
    assert await acached_read(key, lambda: runs.append(1) or "v", cache="locmem") == "v"
    assert await acached_read(key, lambda: runs.append(1) or "w", cache="locmem") == "v"
    assert runs == [1]
    caches["locmem"].clear()
