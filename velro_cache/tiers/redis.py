"""L2: the Redis wire for TieredCache.

The backend speaks Django's API; this class only moves bytes, one round trip
per call (MGET, a DEL of many keys, a non-transactional pipeline for
``set_many``). Connection pools are process-wide and keyed by URL and pool
settings, so the per-thread backend instances Django creates share one pool of
``POOL_SIZE`` connections (a blocking pool: past the limit a caller waits up to
``POOL_TIMEOUT`` instead of opening more sockets).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence

import redis

from ..options import TieredOptions

# Rewrites the expiry stamped in a framed value together with the key's TTL, so
# a value promoted into an L1 after ``touch`` never outlives its L2 copy.
# ARGV[1]: new TTL in ms (-1 = none); ARGV[2]: the packed expiry bytes.
_TOUCH = """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local ms = tonumber(ARGV[1])
local b = string.byte(v, 1)
if b and b >= 161 and b <= 164 and string.len(v) >= 9 then
  v = string.sub(v, 1, 1) .. ARGV[2] .. string.sub(v, 10)
  if ms < 0 then redis.call('SET', KEYS[1], v) else redis.call('SET', KEYS[1], v, 'PX', ms) end
elseif ms < 0 then
  redis.call('PERSIST', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ms)
end
return 1
"""

# INCRBY only on an existing key: Django's contract wants ValueError for a
# missing key, and checking first from the client would race a delete.
_INCR_EXISTING = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('INCRBY', KEYS[1], ARGV[1])
"""

# Deletes a value only if it is still the given bytes: retiring a corrupt entry
# must never delete a good value another writer stored in the meantime.
_DELETE_IF_EQUAL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_pools: dict[tuple, redis.ConnectionPool] = {}
_pools_lock = threading.Lock()


def shared_pool(url: str, options: TieredOptions) -> redis.ConnectionPool:
    """One pool per URL and pool settings per process."""
    key = (url, options.pool_size, options.pool_timeout, options.socket_timeout, options.socket_connect_timeout)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = redis.BlockingConnectionPool.from_url(
                url,
                max_connections=options.pool_size,
                timeout=options.pool_timeout,
                socket_timeout=options.socket_timeout,
                socket_connect_timeout=options.socket_connect_timeout,
                health_check_interval=30,
            )
            _pools[key] = pool
        return pool


def ttl_ms(seconds: float | None) -> int | None:
    """Redis PX argument for a TTL in seconds; sub-millisecond TTLs round up."""
    if seconds is None:
        return None
    return max(1, int(seconds * 1000))


class RedisTier:
    """Bytes in and out of one Redis (the cluster variant shares this surface)."""

    def __init__(self, url: str, options: TieredOptions) -> None:
        self.url = url
        self.client = redis.Redis(connection_pool=shared_pool(url, options))
        self._touch = self.client.register_script(_TOUCH)
        self._incr = self.client.register_script(_INCR_EXISTING)
        self._delete_if_equal = self.client.register_script(_DELETE_IF_EQUAL)

    def get(self, key: str) -> bytes | None:
        return self.client.get(key)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return self.client.mget(keys) if keys else []

    def set(self, key: str, data: bytes | int, seconds: float | None) -> None:
        self.client.set(key, data, px=ttl_ms(seconds))

    def add(self, key: str, data: bytes | int, seconds: float | None) -> bool:
        return bool(self.client.set(key, data, px=ttl_ms(seconds), nx=True))

    def set_many(self, items: Iterable[tuple[str, bytes | int]], seconds: float | None) -> None:
        px = ttl_ms(seconds)
        pipe = self.client.pipeline(transaction=False)
        for key, data in items:
            pipe.set(key, data, px=px)
        pipe.execute()

    def delete(self, key: str) -> bool:
        return bool(self.client.delete(key))

    def delete_if_equal(self, key: str, data: bytes) -> bool:
        return bool(self._delete_if_equal(keys=[key], args=[data]))

    def delete_many(self, keys: Sequence[str]) -> int:
        return self.client.delete(*keys) if keys else 0

    def has_key(self, key: str) -> bool:
        return bool(self.client.exists(key))

    def touch(self, key: str, seconds: float | None, packed_expiry: bytes) -> bool:
        px = ttl_ms(seconds)
        return bool(self._touch(keys=[key], args=[-1 if px is None else px, packed_expiry]))

    def incr(self, key: str, delta: int) -> int | None:
        """The new value, or None when the key does not exist.

        Raises ``TypeError`` when the stored value is not an integer, as
        Django's contract asks (Redis says so with a ResponseError).
        """
        try:
            return self._incr(keys=[key], args=[delta])
        except redis.ResponseError as exc:
            if "not an integer" in str(exc) or "out of range" in str(exc):
                raise TypeError(f"cannot increment the value at {key!r}: {exc}") from None
            raise

    def clear(self, key_prefix: str) -> None:
        """Delete this cache's keys: by prefix when there is one, else FLUSHDB as Django does."""
        if not key_prefix:
            self.client.flushdb()
            return
        pattern = re.sub(r"([\\*?\[\]])", r"\\\1", key_prefix) + ":*"
        batch: list[bytes] = []
        for key in self.client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                self.client.unlink(*batch)
                batch.clear()
        if batch:
            self.client.unlink(*batch)
