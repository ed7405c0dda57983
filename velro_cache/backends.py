"""TieredCache: Django's cache API over an in-process L1 and a Redis L2.

Reads go L1 -> L2 -> miss; an L2 hit is promoted into L1 with the time it has
left in L2 (bounded by ``OPTIONS["L1"]["MAX_AGE"]``), so L1 never outlives L2.
Writes go through both tiers. Without ``LOCATION`` the cache is L1 only.

The hot path is ``get`` on an L1 hit. It avoids Django's per-call key making
and validation (about half of LocMemCache's cost) by memoizing, per alias, the
final key of every string key that validated without warnings; keys that do
warn take the slow path every time so the warning is never swallowed.

Integers are stored raw in Redis so ``incr`` is an atomic ``INCRBY``; for the
same reason, in L1 + L2 mode integers are not held in L1 (another process's
``incr`` would leave a local copy stale).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache, CacheKeyWarning, memcache_key_warnings
from django.core.exceptions import ImproperlyConfigured

from .options import TieredOptions, parse_options
from .serializers import (
    OBJECT,
    CorruptEntry,
    Serializer,
    UnserializableValue,
    derive_signing_key,
    pack_expiry,
)
from .stats import L1_SAMPLE, CacheStats, DataTypeCounters
from .tiers.copying import NotPlannable, Reader, plan_copy
from .tiers.memory import MISSING, MemoryStore
from .tiers.redis import RedisTier

logger = logging.getLogger("velro_cache")

KEY_MEMO_LIMIT = 50_000
# Python's own cost of an L1 entry beyond its key and body: the store's entry,
# the payload tuple and the dict slot. Counted so MAX_BYTES bounds real memory.
ENTRY_OVERHEAD = 160
_L1_SAMPLE_MASK = L1_SAMPLE - 1


class _KeyLocks:
    """One lock per key in flight, dropped when its last holder leaves."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, list] = {}  # key -> [lock, holders]

    @contextmanager
    def lock_for(self, key: str) -> Iterator[None]:
        with self._guard:
            slot = self._locks.setdefault(key, [threading.Lock(), 0])
            slot[1] += 1
        try:
            with slot[0]:
                yield
        finally:
            with self._guard:
                slot[1] -= 1
                if slot[1] == 0:
                    del self._locks[key]


class _SharedState:
    """What all per-thread instances of one cache share within a process."""

    def __init__(self, options: TieredOptions) -> None:
        self.store = MemoryStore(options.l1_max_bytes)
        self.stats = CacheStats()
        self.flights = _KeyLocks()
        self.key_memos: dict[tuple, dict[str, tuple[str, DataTypeCounters]]] = {}


_shared: dict[tuple, _SharedState] = {}
_shared_lock = threading.Lock()


def _shared_state(options: TieredOptions) -> _SharedState:
    # Keyed like LocMemCache (by location), so aliases that point at the same
    # place see the same L1, as Django's own suite expects.
    key = (options.redis_urls, options.l1_max_bytes)
    with _shared_lock:
        state = _shared.get(key)
        if state is None:
            state = _shared[key] = _SharedState(options)
        return state


def _signing_key(options: TieredOptions) -> bytes:
    return derive_signing_key(options.signing_key or django_settings.SECRET_KEY)


class MisconfiguredCache(BaseCache):
    """Stands in for a TieredCache whose settings are invalid.

    Django's own system checks instantiate every configured cache, so raising
    in ``__init__`` would crash the check run before velro_cache's checks can
    report the problem with its id. Construction succeeds instead, and any use
    raises the same ``ImproperlyConfigured`` the checks describe.
    """

    def __init__(self, message: str, params: dict[str, Any]) -> None:
        super().__init__({key: value for key, value in params.items() if key != "OPTIONS"})
        self.message = message

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise ImproperlyConfigured(self.message)

    add = get = set = touch = delete = clear = get_many = set_many = delete_many = has_key = incr = _refuse

    def close(self, **kwargs: Any) -> None:
        """Called by Django after every request; nothing to close."""


class TieredCache(BaseCache):
    """A Django cache backend with an in-process L1 and an optional Redis L2."""

    def __new__(cls, location: Any = None, params: dict[str, Any] | None = None) -> Any:
        options = parse_options(location, (params or {}).get("OPTIONS"))
        if options.errors:
            message = "; ".join(f"{p.msg} ({p.id})" for p in options.errors)
            return MisconfiguredCache(message, params or {})
        instance = super().__new__(cls)
        instance.options = options
        return instance

    def __init__(self, location: Any, params: dict[str, Any]) -> None:
        options = self.options
        self._state = _shared_state(options)
        super().__init__(params)
        self._l1: MemoryStore = self._state.store
        self._stats = self._state.stats
        self._serializer = Serializer(
            signing_key=_signing_key(options),
            pickle_fallback=options.pickle_fallback,
            compress_min_bytes=options.compress_min_bytes,
        )
        self._l2 = RedisTier(options.redis_urls[0], options) if options.redis_urls else None

    # -- keys -------------------------------------------------------------------
    # The key memo depends on how keys are made, so assigning any of these
    # (BaseCache.__init__ does, and so do tests and users) picks the memo that
    # belongs to the new combination; the hot path never re-checks them.
    @property
    def key_func(self) -> Any:
        return self._key_func

    @key_func.setter
    def key_func(self, func: Any) -> None:
        self._key_func = func
        self._select_memo()

    @property
    def key_prefix(self) -> str:
        return self._key_prefix

    @key_prefix.setter
    def key_prefix(self, prefix: str) -> None:
        self._key_prefix = prefix
        self._select_memo()

    @property
    def version(self) -> int:
        return self._version

    @version.setter
    def version(self, version: int) -> None:
        self._version = version
        self._select_memo()

    def _select_memo(self) -> None:
        parts = (getattr(self, "_key_prefix", None), getattr(self, "_version", None), getattr(self, "_key_func", None))
        self._memo = self._state.key_memos.setdefault(parts, {})

    def _key(self, key: Any, version: int | None) -> tuple[str, DataTypeCounters]:
        """The final key and its data type's counters; warns like Django does."""
        if version is None and type(key) is str:
            entry = self._memo.get(key)
            if entry is not None:
                return entry
        full = self.make_key(key, version=version)
        problems = list(memcache_key_warnings(full))
        for problem in problems:
            warnings.warn(problem, CacheKeyWarning)
        entry = (full, self._stats.for_key(key))
        if not problems and version is None and type(key) is str:
            if len(self._memo) >= KEY_MEMO_LIMIT:
                self._memo.clear()
            self._memo[key] = entry
        return entry

    # -- timeouts ---------------------------------------------------------------
    def _ttl(self, timeout: Any) -> float | None:
        """Seconds to live (None = forever); zero or less means "do not keep"."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        return None if timeout is None else float(timeout)

    def _l1_expiry(self, seconds: float | None) -> float | None:
        """Monotonic expiry for L1, capped by MAX_AGE."""
        max_age = self.options.l1_max_age
        if seconds is None:
            return None if max_age is None else time.monotonic() + max_age
        if max_age is not None and max_age < seconds:
            seconds = max_age
        return time.monotonic() + seconds

    # -- L1 payloads ------------------------------------------------------------
    # An L1 payload is ``(reader, stored)``: the value is ``stored`` itself when
    # reader is None, else ``reader(stored)`` - a cheap copy or a decode (see
    # tiers.copying). Every get returns an object no other caller holds.
    def _payload(self, value: Any, encoded: tuple[int, bytes] | None = None) -> tuple[tuple[Reader, Any], int]:
        """The L1 payload for a value and its weight in bytes."""
        try:
            reader, size = plan_copy(value)
            return (reader, value if reader is None else reader(value)), size
        except NotPlannable:
            codec, body = encoded or self._serializer.encode(value)
            return (self._serializer.reader_for(codec), body), sys.getsizeof(body)

    def _store_l1(self, full: str, payload: tuple[Reader, Any], size: int, seconds: float | None) -> bool:
        """Hold a payload in L1; a rejected (oversize) value must not leave an old one behind."""
        weight = size + sys.getsizeof(full) + ENTRY_OVERHEAD
        if self._l1.set(full, payload, weight, self._l1_expiry(seconds)):
            return True
        self._l1.delete(full)
        return False

    def _wire(self, value: Any, seconds: float | None) -> tuple[bytes | int, tuple[int, bytes] | None]:
        """The Redis value and, when one was made, the encoded body (reused for L1)."""
        expires_at = None if seconds is None else time.time() + seconds
        if type(value) is int:
            return self._serializer.dumps(value, expires_at), None
        encoded = self._serializer.encode(value)
        return self._serializer.frame(*encoded, expires_at), encoded

    def _held_in_l1(self, value: Any) -> bool:
        return self._l2 is None or type(value) is not int

    # -- reads ------------------------------------------------------------------
    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        # The memo lookup of _key, inlined: a function call is a fifth of a hit.
        entry = self._memo.get(key) if version is None and type(key) is str else None
        full, counters = entry if entry is not None else self._key(key, version)
        if not next(self._stats.l1_tick) & _L1_SAMPLE_MASK:
            return self._timed_get(full, counters, default)
        payload = self._l1.get(full)
        if payload is not MISSING:
            next(counters.l1_hits)
            reader, stored = payload
            return stored if reader is None else reader(stored)
        return self._get_from_l2(full, counters, default)

    def _timed_get(self, full: str, counters: DataTypeCounters, default: Any) -> Any:
        start = time.perf_counter()
        payload = self._l1.get(full)
        if payload is MISSING:
            return self._get_from_l2(full, counters, default)
        reader, stored = payload
        value = stored if reader is None else reader(stored)
        self._stats.latency["l1"].observe(time.perf_counter() - start)
        next(counters.l1_hits)
        return value

    def _get_from_l2(self, full: str, counters: DataTypeCounters, default: Any) -> Any:
        if self._l2 is None:
            next(counters.misses)
            return default
        start = time.perf_counter()
        data = self._l2.get(full)
        self._stats.latency["l2"].observe(time.perf_counter() - start)
        found, value = self._accept_from_l2(full, data, counters)
        return value if found else default

    def _accept_from_l2(self, full: str, data: bytes | None, counters: DataTypeCounters) -> tuple[bool, Any]:
        """Decode an L2 value, promote it into L1, count the outcome."""
        if data is None:
            next(counters.misses)
            return False, None
        try:
            codec, body, expires_at = self._serializer.unframe(data)
            value = self._serializer.decode(codec, body)
        except CorruptEntry as exc:
            next(counters.corrupt)
            next(counters.misses)
            logger.warning("velro_cache: retiring a corrupt L2 entry at %r: %s", full, exc)
            # Left in place it would make every add()/get_or_set() fail on this key.
            self._l2.delete_if_equal(full, data)
            return False, None
        next(counters.l2_hits)
        if codec != OBJECT:  # raw integers stay in Redis only
            self._promote(full, value, codec, body, expires_at)
        return True, value

    def _promote(self, full: str, value: Any, codec: int, body: Any, expires_at: float | None) -> None:
        seconds = None if expires_at is None else expires_at - time.time()
        if seconds is not None and seconds <= 0:
            return
        payload, size = self._payload(value, (codec, body))
        self._store_l1(full, payload, size, seconds)

    def get_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        found: dict[Any, Any] = {}
        pending: list[tuple[Any, str, DataTypeCounters]] = []
        for key in keys:
            full, counters = self._key(key, version)
            payload = self._l1.get(full)
            if payload is MISSING:
                pending.append((key, full, counters))
            else:
                next(counters.l1_hits)
                reader, stored = payload
                found[key] = stored if reader is None else reader(stored)
        if pending and self._l2 is None:
            for _, _, counters in pending:
                next(counters.misses)
        elif pending:
            start = time.perf_counter()
            datas = self._l2.get_many([full for _, full, _ in pending])
            self._stats.latency["l2"].observe(time.perf_counter() - start)
            for (key, full, counters), data in zip(pending, datas):
                ok, value = self._accept_from_l2(full, data, counters)
                if ok:
                    found[key] = value
        return found

    def has_key(self, key: Any, version: int | None = None) -> bool:
        full, _ = self._key(key, version)
        if full in self._l1:
            return True
        return self._l2 is not None and self._l2.has_key(full)

    # -- writes -----------------------------------------------------------------
    def set(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> None:
        full, _ = self._key(key, version)
        if not self._set(full, value, self._ttl(timeout)):
            logger.warning("velro_cache: %r was not cached: larger than the L1 budget", full)

    def _set(self, full: str, value: Any, seconds: float | None) -> bool:
        """Write through both tiers; False when no tier kept the value."""
        next(self._stats.sets)
        if seconds is not None and seconds <= 0:
            self._delete(full)
            return True
        if self._l2 is None:
            return self._store_l1(full, *self._payload(value), seconds)
        data, encoded = self._wire(value, seconds)
        self._l2.set(full, data, seconds)
        if self._held_in_l1(value):
            self._store_l1(full, *self._payload(value, encoded), seconds)
        else:
            self._l1.delete(full)
        return True

    def add(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        full, _ = self._key(key, version)
        seconds = self._ttl(timeout)
        keep = seconds is None or seconds > 0
        if self._l2 is None:
            payload, size = self._payload(value)
            with self._l1.lock:
                if full in self._l1:
                    return False
                if keep:
                    self._store_l1(full, payload, size, seconds)
                return True
        data, encoded = self._wire(value, seconds)
        if not self._l2.add(full, data, seconds if keep else 0.001):
            return False
        if not keep:
            self._delete(full)
        elif self._held_in_l1(value):
            self._store_l1(full, *self._payload(value, encoded), seconds)
        return True

    def set_many(self, data: dict[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> list[Any]:
        seconds = self._ttl(timeout)
        if seconds is not None and seconds <= 0:
            self.delete_many(data, version=version)
            return []
        entries = [(key, self._key(key, version)[0], value) for key, value in data.items()]
        wires = [self._wire(value, seconds) for _, _, value in entries] if self._l2 is not None else None
        if wires is not None:
            self._l2.set_many([(full, wire[0]) for (_, full, _), wire in zip(entries, wires)], seconds)
        failed = []
        for index, (key, full, value) in enumerate(entries):
            next(self._stats.sets)
            if not self._held_in_l1(value):
                self._l1.delete(full)
                continue
            encoded = wires[index][1] if wires is not None else None
            if not self._store_l1(full, *self._payload(value, encoded), seconds) and self._l2 is None:
                failed.append(key)
        return failed

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        full, _ = self._key(key, version)
        seconds = self._ttl(timeout)
        if seconds is not None and seconds <= 0:
            return self._delete(full)
        if self._l2 is not None:
            expires_at = None if seconds is None else time.time() + seconds
            if not self._l2.touch(full, seconds, pack_expiry(expires_at)):
                self._l1.delete(full)
                return False
            if not self._l1.touch(full, self._l1_expiry(seconds)):
                self._l1.delete(full)
            return True
        return self._l1.touch(full, self._l1_expiry(seconds))

    def delete(self, key: Any, version: int | None = None) -> bool:
        full, _ = self._key(key, version)
        return self._delete(full)

    def _delete(self, full: str) -> bool:
        next(self._stats.deletes)
        in_l1 = self._l1.delete(full)
        if self._l2 is None:
            return in_l1
        return self._l2.delete(full)

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        fulls = [self._key(key, version)[0] for key in keys]
        for full in fulls:
            self._l1.delete(full)
        if self._l2 is not None:
            self._l2.delete_many(fulls)

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        full, _ = self._key(key, version)
        if self._l2 is not None:
            self._l1.delete(full)
            value = self._l2.incr(full, delta)
            if value is None:
                raise ValueError(f"Key '{key}' not found")
            return value
        with self._l1.lock:
            found = self._l1.get_with_expiry(full)
            if found is None:
                raise ValueError(f"Key '{key}' not found")
            (reader, stored), expires_at = found
            new_value = (stored if reader is None else reader(stored)) + delta
            payload, size = self._payload(new_value)
            self._l1.set(full, payload, size + sys.getsizeof(full) + ENTRY_OVERHEAD, expires_at)
            return new_value

    # -- read-through -----------------------------------------------------------
    def get_or_load(
        self, key: Any, loader: Callable[[], Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Any:
        """The cached value, or ``loader()``'s result stored and returned.

        Concurrent misses on one key in this process run the loader once
        (single-flight): the others wait for and share its result. Unlike
        ``get_or_set``, a loader result of ``None`` is cached too.
        """
        found = self.get(key, MISSING, version=version)
        if found is not MISSING:
            return found
        full, _ = self._key(key, version)
        with self._state.flights.lock_for(full):
            found = self.get(key, MISSING, version=version)
            if found is not MISSING:
                return found
            value = loader()
            self.set(key, value, timeout=timeout, version=version)
            return value

    def clear(self) -> None:
        if self._l2 is not None:
            self._l2.clear(self.key_prefix)
        self._l1.clear()

    def close(self, **kwargs: Any) -> None:
        """Nothing to release per request: the L1 and the Redis pool are process-wide."""

    # -- async ------------------------------------------------------------------
    async def aget(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        """Serve an L1 hit on the event loop; only an L2 read goes to a thread."""
        full, counters = self._key(key, version)
        payload = self._l1.get(full)
        if payload is not MISSING:
            next(counters.l1_hits)
            reader, stored = payload
            return stored if reader is None else reader(stored)
        return await sync_to_async(self._get_from_l2, thread_sensitive=False)(full, counters, default)

    # -- observability ----------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """A snapshot of this process's counters, latency and L1 occupancy."""
        snapshot = self._stats.snapshot()
        snapshot["l1"] = {
            "bytes": self._l1.weighted_size,
            "max_bytes": self._l1.max_bytes,
            "entries": len(self._l1),
            "evictions": self._l1.evictions,
        }
        snapshot["l2"] = {"enabled": self._l2 is not None, "url": self._l2.url if self._l2 else None}
        return snapshot


__all__ = ["TieredCache", "UnserializableValue"]
