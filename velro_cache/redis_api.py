"""django-redis's extension API on TieredCache, with the L1 kept coherent.

Code written against ``django_redis.cache.RedisCache`` calls more than Django's
cache API: key expiry (``ttl``, ``expire``, ``persist``...), ``lock``, key
scans (``keys``, ``iter_keys``, ``delete_pattern``), ``set(nx=True)``,
``incr(ignore_key_check=True)`` and the raw client (``cache.client``,
``get_redis_connection``). ``RedisApiMixin`` gives TieredCache the same calls
with the same return values, built on the backend's own write paths so every
process's L1 follows:

* expiry changes are ``touch`` (the frame is re-signed with its new expiry,
  which lives inside the MAC, and every process drops its L1 copy); expiry
  reads go to Redis, the tier every process agrees on;
* scans use SCAN, never KEYS (KEYS blocks Redis for the whole keyspace), and
  ``delete_pattern`` deletes batch by batch through ``delete_many``'s path,
  each batch announced to the other processes;
* the breaker still decides: with Redis down, expiry reads see no key (as
  ``get`` sees a miss), expiry changes return False and are replayed as
  deletes, a ``delete_pattern`` becomes a clear of the cache's key prefix
  replayed when Redis answers (deleting more than asked is always safe for a
  cache, deleting less is not). Only calls whose answer cannot be made up
  raise: ``keys``/``iter_keys`` raise ``L2Unavailable``, ``incr`` raises
  ``ValueError`` as it does already, a lock raises redis-py's own errors.

Without ``LOCATION`` (L1 only) the expiry and scan calls act on the L1, which
is then the whole truth; ``lock`` and ``get_client`` raise ``L2Required``.
See docs/migrating-from-django-redis.md.
"""

from __future__ import annotations

import datetime
import re
import time
import uuid
from collections.abc import Iterator
from functools import cached_property
from typing import Any

import redis
from django.core.cache.backends.base import DEFAULT_TIMEOUT
from redis.lock import Lock

from .exceptions import L2Required, L2Unavailable
from .tiers.cluster import ClusterClient
from .tiers.redis import NotACounter

# Keys asked for per SCAN step (Redis's COUNT hint); each delete_pattern batch is one DEL.
SCAN_COUNT = 1000
# incr(ignore_key_check=True) retries "add, else incr" this often when racing deletes.
CREATE_ATTEMPTS = 16

_GLOB_SPECIAL = re.compile(r"([\\*?\[\]])")


def glob_escape(text: str) -> str:
    """``text`` matched literally inside a Redis glob (a key prefix may hold ``*`` or ``[``)."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A Redis glob (``*``, ``?``, ``[a-z]``, ``[^x]``, ``\\`` escapes) as a regex, for the L1-only scan.

    ``fnmatch`` is close but not the same language: it negates with ``[!``
    and has no backslash escapes, so a pattern would match differently in the
    two modes.
    """
    out, i, n = [], 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            negate = body.startswith("^")
            body = body[1:] if negate else body
            parts = [re.escape(c) if c != "-" else "-" for c in body.replace("\\", "")]
            out.append("[" + ("^" if negate else "") + "".join(parts) + "]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def _epoch_seconds(when: datetime.datetime | float, per_second: int) -> float:
    """An absolute expiry as epoch seconds: a datetime (naive = local time, as redis-py reads it) or a number."""
    if isinstance(when, datetime.datetime):
        return when.timestamp()
    return float(when) / per_second


class CacheLock(Lock):
    """redis-py's Lock whose token is a value the cache can read, and whose release is announced.

    django-redis's lock lives at the cache key itself, so ``has_key`` sees a
    held lock; TieredCache's ``has_key`` counts only values it can verify, so
    the token is a signed frame of a random text (still unique per acquire,
    which is what makes a release by another holder impossible). A release
    deletes the key behind the backend's back: it drops any L1 copy a ``get``
    of the lock key promoted, here and in every other process; a lock that
    times out instead takes such copies with it, as the token's frame expires
    with the lock (``extend`` lengthens only the Redis TTL, so a copy then
    expires early: a re-read, never a stale answer).
    """

    def __init__(self, *args: Any, new_token: Any, on_release: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._new_token = new_token
        self._on_release = on_release

    def acquire(
        self, sleep: float | None = None, blocking: bool | None = None, blocking_timeout: float | None = None, token: Any = None
    ) -> Any:
        token = token or self._new_token(self.timeout)
        return super().acquire(sleep=sleep, blocking=blocking, blocking_timeout=blocking_timeout, token=token)

    def do_release(self, expected_token: Any) -> None:
        super().do_release(expected_token)
        self._on_release()


class L2Client:
    """What ``cache.client`` is: the way to the raw redis-py client of a cache, as django-redis's ``cache.client``.

    ``get_client()`` is a ``redis.Redis`` (a ``RedisCluster`` on a cluster)
    sharing the cache's process-wide pool; what is written through it
    bypasses the L1 and its coherence, so use it for Redis's own data types,
    not for the cache's keys.
    """

    def __init__(self, cache: Any) -> None:
        self._cache = cache

    @property
    def _serializer(self) -> Any:
        """The cache's serializer, where django-redis code looks for it (``cache.client._serializer``)."""
        return self._cache._serializer

    def make_key(self, key: Any, version: int | None = None) -> str:
        return self._cache.make_key(key, version=version)

    def _has_compression_enabled(self) -> bool:
        """Asked by code that avoids ``sscan(match=...)`` under django-redis's compression: never in the way here.

        TieredCache applies ``match`` to decoded members (``redis_collections``),
        so compression (which members never get) cannot defeat it.
        """
        return False

    def get_client(self, write: bool = True) -> Any:
        """The raw client; ``write`` is accepted for django-redis's signature (one Redis serves both)."""
        tier = self._cache._l2
        if tier is None:
            raise L2Required("this TieredCache has no LOCATION: there is no Redis client (L1 only)")
        client = tier.client
        return client.real() if isinstance(client, ClusterClient) else client

    def close(self, **kwargs: Any) -> None:
        """Called by ``cache.close()`` after every request: keeps the connections.

        The pool is process-wide and shared by every alias on the same Redis;
        closing it per request would reconnect on every request (django-redis
        does the same unless ``DJANGO_REDIS_CLOSE_CONNECTION``). ``disconnect``
        closes them for real.
        """

    def disconnect(self) -> None:
        """Close every pooled connection of this cache's Redis; the next call reconnects."""
        client = self.get_client()
        if isinstance(client, redis.Redis):
            client.connection_pool.disconnect()
        else:
            client.disconnect_connection_pools()


class RedisApiMixin:
    """django-redis's calls on TieredCache (the attributes used are TieredCache's own)."""

    # Provided by TieredCache; declared for the type checker only.
    _l1: Any
    _l2: Any
    _state: Any
    _serializer: Any
    key_prefix: str
    version: int
    key_func: Any
    _key: Any
    _l2_call: Any
    _l2_read: Any
    _delete_full: Any
    _incr_on_client: Any
    _add_l2: Any
    _wire: Any
    _verifies: Any
    _ttl: Any
    touch: Any
    incr: Any
    add: Any

    # -- the raw client -----------------------------------------------------------
    @cached_property
    def client(self) -> L2Client:
        """This cache's ``L2Client``, one per instance (so wrapping its ``close`` reaches ``cache.close()``)."""
        return L2Client(self)

    def get_client(self, write: bool = True) -> Any:
        """The raw redis-py client (see ``L2Client.get_client``)."""
        return self.client.get_client(write)

    def close(self, **kwargs: Any) -> None:
        """Django calls this after every request (``request_finished``); see ``L2Client.close``."""
        self.client.close(**kwargs)

    # -- expiry reads -------------------------------------------------------------
    def pttl(self, key: Any, version: int | None = None) -> int | None:
        """Milliseconds left: None for a key that never expires, 0 for no key (django-redis's values)."""
        full, _ = self._key(key, version)
        if self._l2 is None:
            return self._l1_pttl(full)
        try:
            data, pttl = self._l2_read(self._l2.value_and_pttl, full)
        except L2Unavailable:
            return 0  # what get says then: no such key
        if type(data) is int:  # a set, hash or sorted set (redis_collections): its TTL is the key's
            return None if pttl == -1 else max(0, pttl)
        if data is None or not self._verifies(full, data) or pttl == -2:
            return 0
        return None if pttl == -1 else pttl

    def ttl(self, key: Any, version: int | None = None) -> int | None:
        """Seconds left, rounded as Redis's TTL rounds; None: never expires; 0: no key."""
        ms = self.pttl(key, version)
        return None if ms is None else (ms + 500) // 1000

    def _l1_pttl(self, full: str) -> int | None:
        found = self._l1.get_with_expiry(full)
        if found is None:
            return 0
        expires_at = found[1]
        return None if expires_at is None else max(0, int((expires_at - time.monotonic()) * 1000))

    # -- expiry changes: all are touch, so the L1 follows ------------------------------
    def expire(self, key: Any, timeout: Any, version: int | None = None) -> bool:
        """A new TTL in seconds (zero or less deletes); whether the key existed. None: never expire."""
        return self.touch(key, timeout, version)

    def pexpire(self, key: Any, timeout: Any, version: int | None = None) -> bool:
        """``expire`` in milliseconds (``DEFAULT_TIMEOUT``: the cache's default, in seconds)."""
        if timeout is not DEFAULT_TIMEOUT and timeout is not None:
            timeout = timeout / 1000
        return self.touch(key, timeout, version)

    def expire_at(self, key: Any, when: datetime.datetime | float, version: int | None = None) -> bool:
        """Expire at a datetime or epoch seconds; a time past deletes the key."""
        return self.touch(key, _epoch_seconds(when, 1) - time.time(), version)

    def pexpire_at(self, key: Any, when: datetime.datetime | float, version: int | None = None) -> bool:
        """Expire at a datetime or epoch milliseconds."""
        return self.touch(key, _epoch_seconds(when, 1000) - time.time(), version)

    def persist(self, key: Any, version: int | None = None) -> bool:
        """Remove the key's TTL; True only if it had one (Redis's PERSIST answer)."""
        if self.pttl(key, version) in (0, None):
            return False
        return self.touch(key, None, version)

    # -- writes with django-redis's flags ----------------------------------------------
    def _incr_or_create(self, key: Any, delta: int, version: int | None) -> int:
        """``incr(ignore_key_check=True)``: a missing key starts at ``delta``, with no TTL (INCRBY's way)."""
        full, _ = self._key(key, version)
        if self._l2 is None:
            with self._l1.lock:  # reentrant: add and incr take it too
                self.add(key, 0, None, version)
                return self.incr(key, delta, version)
        try:
            for _ in range(CREATE_ATTEMPTS):
                value = self._l2_call(self._l2.incr, full, delta)
                if value is NotACounter:
                    value = self._incr_on_client(full, delta)
                if value is not None:
                    return value
                if self._add_l2(full, self._wire(full, delta, None)[0], None):
                    return delta
        except L2Unavailable:
            raise ValueError(f"Key '{key}' not found (Redis unavailable)") from None
        raise ValueError(f"incr of {key!r} lost {CREATE_ATTEMPTS} races with deletes in a row")

    # -- locks --------------------------------------------------------------------------
    def lock(
        self,
        key: Any,
        version: int | None = None,
        timeout: float | None = None,
        sleep: float = 0.1,
        blocking: bool = True,
        blocking_timeout: float | None = None,
        thread_local: bool = True,
    ) -> Lock:
        """A redis-py lock at the cache key (as django-redis's); its calls raise redis-py's errors when Redis is down.

        Whether a caller holds a lock cannot be made up, so unlike the cache
        calls a lock does not hide an outage.
        """
        full, _ = self._key(key, version)
        if self._l2 is None:
            raise L2Required("lock() needs Redis (LOCATION): an L1-only cache has no lock shared between processes")
        return self.get_client().lock(
            full,
            timeout=timeout,
            sleep=sleep,
            blocking=blocking,
            blocking_timeout=blocking_timeout,
            thread_local=thread_local,
            lock_class=_lock_class(self, full),
        )

    def _announce_released(self, full: str) -> None:
        """After a release Redis took: every process drops its copy of the token.

        Not held back for replay when the announcement fails, unlike a write's:
        the replay deletes the key, which by then may be another holder's lock.
        A copy left elsewhere expires with the lock's timeout (or L1's MAX_AGE).
        """
        self._state.forget_local([full])
        try:
            self._l2_call(self._l2.client.publish, self._l2.channel, self._state.drop_message([full]))
        except L2Unavailable:
            pass

    # -- key scans ----------------------------------------------------------------------
    def make_pattern(self, pattern: str, version: int | None = None, prefix: str | None = None) -> str:
        """The physical glob of a key pattern: the prefix and version escaped, the pattern as given."""
        prefix = self.key_prefix if prefix is None else prefix
        version = self.version if version is None else version
        return self.key_func(pattern, glob_escape(prefix), glob_escape(str(version)))

    def _scan_full(self, pattern: str, version: int | None, prefix: str | None, itersize: int | None) -> Iterator[str]:
        """Physical keys matching ``pattern``: SCAN on Redis (each call behind the breaker), else the L1's keys."""
        glob = self.make_pattern(pattern, version, prefix)
        if self._l2 is None:
            matcher = glob_regex(glob)
            yield from (full for full in self._l1.keys() if matcher.fullmatch(full))
            return
        client, cursor = self._l2.client, 0
        count = itersize or SCAN_COUNT
        if isinstance(client, ClusterClient):  # one cursor per node: redis-py's scan_iter walks them all
            yield from (raw.decode() for raw in self._l2_call(lambda: list(client.scan_iter(match=glob, count=count))))
            return
        while True:
            cursor, raws = self._l2_call(client.scan, cursor, glob, count)
            yield from (raw.decode() for raw in raws)
            if int(cursor) == 0:
                return

    @staticmethod
    def reverse_key(full: str) -> str:
        """The user's key of a physical ``prefix:version:key`` (Django's default key function), as django-redis reverses it."""
        parts = full.split(":", 2)
        return parts[2] if len(parts) == 3 else full  # a custom KEY_FUNCTION's key: the physical one

    def iter_keys(self, search: str, itersize: int | None = None, version: int | None = None) -> Iterator[str]:
        """The keys matching a glob, lazily; raises ``L2Unavailable`` when Redis cannot answer."""
        return (self.reverse_key(full) for full in self._scan_full(search, version, None, itersize))

    def keys(self, search: str, version: int | None = None) -> list[str]:
        """The keys matching a glob (SCAN, never KEYS); raises ``L2Unavailable`` when Redis cannot answer."""
        return list(self.iter_keys(search, version=version))

    def delete_pattern(self, pattern: str, version: int | None = None, prefix: str | None = None, itersize: int | None = None) -> int:
        """Delete the keys matching a glob, in SCAN batches, each announced; how many were deleted.

        With Redis down the count is 0 and the whole key prefix is cleared
        when Redis answers again (the keys to delete cannot be known now).
        """
        batch_size = itersize or SCAN_COUNT
        deleted, batch = 0, []
        try:
            for full in self._scan_full(pattern, version, prefix, itersize):
                batch.append(full)
                if len(batch) >= batch_size:
                    deleted += self._delete_full(batch)
                    batch = []
        except L2Unavailable:
            self._state.hold_back_clear(self.key_prefix if prefix is None else prefix)
            self._state.forget_all_local()
            return 0
        return deleted + (self._delete_full(batch) if batch else 0)


def _lock_class(cache: RedisApiMixin, full: str) -> Any:
    """A CacheLock class bound to one cache key (redis-py builds the lock itself from ``lock_class``)."""

    def new_token(timeout: float | None) -> bytes:
        """A signed random text expiring with the lock: an L1 copy a ``get`` promoted never outlives it."""
        expires_at = None if timeout is None else time.time() + timeout
        return cache._serializer.dumps(uuid.uuid4().hex, expires_at, key=full)

    class BoundCacheLock(CacheLock):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, new_token=new_token, on_release=lambda: cache._announce_released(full), **kwargs)

    return BoundCacheLock


__all__ = ["RedisApiMixin", "L2Client", "CacheLock", "get_redis_connection"]


def get_redis_connection(alias: str = "default", write: bool = True) -> Any:
    """The raw redis-py client of a TieredCache alias (django-redis's ``get_redis_connection``)."""
    from django.core.cache import caches

    cache = caches[alias]
    if not isinstance(cache, RedisApiMixin):
        raise TypeError(f"cache {alias!r} is {type(cache).__name__}, not a TieredCache")
    return cache.get_client(write)
