"""Cached reads of the Velro domain: one place for keys, TTLs and read-through.

Every cached value is plain data (dicts, lists, strings, numbers; datetimes as ISO
strings) so any serializer can store it, and every key's first segment names its
data type, which is what the cache's statistics and TTL settings group by.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from django.core.cache import cache

from .models import Generation, SystemConfig, TeamMembership

# Seconds, mirroring velro-cache's default TTL per data type.
GENERATION_TTL = 300
SESSION_TTL = 600
TEAM_MEMBERSHIP_TTL = 1200
SYSTEM_CONFIG_TTL = 3600
# Unknown tokens are remembered briefly so a client retrying a bad key costs no query.
UNKNOWN_TOKEN_TTL = 60

_MISSING = object()


def generation_key(generation_id: int) -> str:
    return f"generation:{generation_id}:meta"


def me_key(user_id: int) -> str:
    return f"session:user:{user_id}:me"


def token_key(digest: str) -> str:
    return f"session:token:{digest}"


def memberships_key(user_id: int) -> str:
    return f"team_membership:user:{user_id}"


def system_config_key(key: str) -> str:
    return f"system_config:{key}"


class ReadStats:
    """Hit/miss counts of the read-through helpers, per data type.

    Kept per thread (no lock on the hot path) and summed on demand, so the demo can
    report a hit rate even on a backend that exposes no statistics, and attribute
    hits and misses to individual requests.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[Counter] = []
        self._lock = threading.Lock()

    def thread_counter(self) -> Counter:
        counter = getattr(self._local, "counter", None)
        if counter is None:
            counter = Counter()
            with self._lock:
                self._all.append(counter)
            self._local.counter = counter
        return counter

    def record(self, key: str, hit: bool) -> None:
        counter = self.thread_counter()
        counter[(key.split(":", 1)[0], hit)] += 1
        counter["hits" if hit else "misses"] += 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Totals as ``{data_type: {"hits": n, "misses": n}}``."""
        with self._lock:
            counters = list(self._all)
        totals: dict[str, dict[str, int]] = {}
        for counter in counters:
            for entry, count in list(counter.items()):
                if isinstance(entry, tuple):
                    data_type, hit = entry
                    slot = totals.setdefault(data_type, {"hits": 0, "misses": 0})
                    slot["hits" if hit else "misses"] += count
        return totals

    def reset(self) -> None:
        with self._lock:
            for counter in self._all:
                counter.clear()


read_stats = ReadStats()


def read_through(key: str, ttl: int, load: Callable[[], Any]) -> Any:
    """Return the cached value or load, store and return it (``None`` is cached too)."""
    value = cache.get(key, _MISSING)
    read_stats.record(key, value is not _MISSING)
    if value is _MISSING:
        value = load()
        cache.set(key, value, ttl)
    return value


def serialize_generation(generation: Generation) -> dict[str, Any]:
    return {
        "id": generation.pk,
        "owner_id": generation.owner_id,
        "team_id": generation.team_id,
        "prompt": generation.prompt,
        "status": generation.status,
        "model_name": generation.model_name,
        "media_url": generation.media_url,
        "thumbnail_url": generation.thumbnail_url,
        "media_type": generation.media_type,
        "width": generation.width,
        "height": generation.height,
        "duration_ms": generation.duration_ms,
        "created_at": generation.created_at.isoformat(),
        "updated_at": generation.updated_at.isoformat(),
    }


def generation_meta(generation_id: int) -> dict[str, Any] | None:
    """A generation's serialized fields; missing ones are not cached, so a row
    created later is never hidden behind a cached "not found"."""
    key = generation_key(generation_id)
    value = cache.get(key, _MISSING)
    read_stats.record(key, value is not _MISSING)
    if value is not _MISSING:
        return value
    generation = Generation.objects.filter(pk=generation_id).first()
    if generation is None:
        return None
    value = serialize_generation(generation)
    cache.set(key, value, GENERATION_TTL)
    return value


def generation_metas(generation_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """Batch form of `generation_meta`: one cache round trip and at most one query."""
    keys = {generation_key(pk): pk for pk in generation_ids}
    found = cache.get_many(list(keys))
    for key in keys:
        read_stats.record(key, key in found)
    result = {keys[key]: value for key, value in found.items()}
    wanted = [pk for key, pk in keys.items() if key not in found]
    if wanted:
        loaded = {g.pk: serialize_generation(g) for g in Generation.objects.filter(pk__in=wanted)}
        if loaded:
            cache.set_many({generation_key(pk): v for pk, v in loaded.items()}, GENERATION_TTL)
        result.update(loaded)
    return result


def forget_generation(generation_id: int) -> None:
    cache.delete(generation_key(generation_id))


def team_memberships(user_id: int) -> list[dict[str, Any]]:
    """The user's teams and roles, which both authorization and /api/me/ need."""

    def load() -> list[dict[str, Any]]:
        rows = TeamMembership.objects.filter(user_id=user_id).select_related("team")
        return [
            {
                "team_id": m.team_id,
                "team_name": m.team.name,
                "team_slug": m.team.slug,
                "role": m.role,
            }
            for m in rows.order_by("team__name")
        ]

    return read_through(memberships_key(user_id), TEAM_MEMBERSHIP_TTL, load)


def system_config(key: str, default: Any = None) -> Any:
    """A SystemConfig value, cached wrapped in a dict: that tells a missing row
    (``{}``) from a stored JSON null, and keeps bare integers, which a tiered
    cache may keep out of its in-process tier, cacheable in every tier."""

    def load() -> dict[str, Any]:
        rows = SystemConfig.objects.filter(key=key).values_list("value", flat=True)[:1]
        return {"value": rows[0]} if rows else {}

    return read_through(system_config_key(key), SYSTEM_CONFIG_TTL, load).get("value", default)
