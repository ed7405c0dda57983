"""Cached reads of the Velro domain: one place for keys and read-through.

Every cached value is plain data (dicts, lists, strings, numbers; datetimes as ISO
strings) so any serializer can store it, and every key's first segment names its
data type, which is what the cache's statistics and TTL settings group by.

Keys are made by ``velro_cache.keys.build_key`` and reads go through
``velro_cache.reads`` (``cached_read``, ``cached_read_many``): TTLs come from
``VELRO_CACHE["TTL"]`` by data type, and ``studio/cache.py`` declares which
model changes make which of these keys stale, so no view or command has to
delete anything by hand.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import velro_cache
from velro_cache.keys import build_key, data_type_segment
from velro_cache.reads import cached_read, cached_read_many
from velro_cache.warming import note_read

from .models import Generation, SystemConfig, TeamMembership


def generation_key(generation_id: int) -> str:
    return build_key("generation", generation_id, "meta")


def me_key(user_id: int) -> str:
    return build_key("session", "user", user_id, "me")


def token_digest(key: str) -> str:
    """The raw key is a credential: it never appears in cache keys, only this digest."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def token_key(digest: str) -> str:
    return build_key("session", "token", digest)


def memberships_key(user_id: int) -> str:
    return build_key("team_membership", "user", user_id)


def system_config_key(key: str) -> str:
    return build_key("system_config", key)


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
        counter[(data_type_segment(key), hit)] += 1
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


def read_through(key: str, load: Callable[[], Any]) -> Any:
    """``cached_read``, counted as a hit or a miss for the demo's report."""
    loaded = False

    def counted_load() -> Any:
        nonlocal loaded
        loaded = True
        return load()

    value = cached_read(key, counted_load)
    read_stats.record(key, not loaded)
    note_read(key)  # scores runtime warming's predictions
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
    """A generation's serialized fields, or None when it does not exist (cached too:
    creating the row retires the cached "not found")."""

    def load() -> dict[str, Any] | None:
        generation = Generation.objects.filter(pk=generation_id).first()
        return None if generation is None else serialize_generation(generation)

    return read_through(generation_key(generation_id), load)


def generation_metas(generation_ids: Iterable[int]) -> dict[int, dict[str, Any] | None]:
    """Batch form of `generation_meta`: one cache round trip and at most one query."""
    keys = {pk: generation_key(pk) for pk in generation_ids}
    missed: set[int] = set()

    def load(wanted: list[int]) -> dict[int, dict[str, Any]]:
        missed.update(wanted)
        return {g.pk: serialize_generation(g) for g in Generation.objects.filter(pk__in=wanted)}

    result = cached_read_many(keys, load)
    for pk, key in keys.items():
        read_stats.record(key, pk not in missed)
        note_read(key)
    return result


def forget_generation(generation_id: int) -> None:
    """For writes the declarations cannot see (the demo's replay against a DummyCache)."""
    velro_cache.invalidate(prefixes=[("generation", generation_id)])


def team_memberships(user_id: int) -> list[dict[str, Any]]:
    """The user's teams and roles, which both authorization and /api/me/ need."""

    def load() -> list[dict[str, Any]]:
        rows = TeamMembership.objects.filter(user_id=user_id).select_related("team")
        return [_membership_row(m) for m in rows.order_by("team__name")]

    return read_through(memberships_key(user_id), load)


def team_memberships_many(user_ids: Iterable[int]) -> dict[int, list[dict[str, Any]]]:
    """Batch form of `team_memberships` (warming uses it): one cache round trip, at most one query."""
    keys = {user_id: memberships_key(user_id) for user_id in user_ids}

    def load(wanted: list[int]) -> dict[int, list[dict[str, Any]]]:
        found: dict[int, list[dict[str, Any]]] = {user_id: [] for user_id in wanted}
        rows = TeamMembership.objects.filter(user_id__in=wanted).select_related("team")
        for m in rows.order_by("team__name"):
            found[m.user_id].append(_membership_row(m))
        return found

    return cached_read_many(keys, load)


def _membership_row(m: TeamMembership) -> dict[str, Any]:
    return {"team_id": m.team_id, "team_name": m.team.name, "team_slug": m.team.slug, "role": m.role}


def system_config(key: str, default: Any = None) -> Any:
    """A SystemConfig value, cached wrapped in a dict: that tells a missing row
    (``{}``) from a stored JSON null, and keeps bare integers, which a tiered
    cache may keep out of its in-process tier, cacheable in every tier."""

    def load() -> dict[str, Any]:
        rows = SystemConfig.objects.filter(key=key).values_list("value", flat=True)[:1]
        return {"value": rows[0]} if rows else {}

    return read_through(system_config_key(key), load).get("value", default)
