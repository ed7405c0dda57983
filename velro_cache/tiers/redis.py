"""L2: the Redis wire for TieredCache.

The backend speaks Django's API; this class only moves bytes, one round trip
per call: MGET for ``get_many``, one script for ``set_many`` and one
non-transactional pipeline for every other write, each carrying the write
itself, the retirement of the key's fill lease and the coherence message
telling other processes to drop their L1 copies.

Fill leases make read-through race-free: a loader takes ``lease_key(key)`` before
reading the database and may store its result only while it still holds it;
every write or delete of the key removes the lease, so a value computed from
data read before that write is never stored after it.

Connection pools are process-wide and keyed by URL and pool settings, so the
per-thread backend instances Django creates share one pool of ``POOL_SIZE``
connections (a blocking pool: past the limit a caller waits up to
``POOL_TIMEOUT`` instead of opening more sockets).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS as SLOTS
from redis.crc import key_slot
from redis.utils import HIREDIS_AVAILABLE

from ..options import TieredOptions
from .incarnation import checked
from .pool import BoundedPool, redis_metrics_on
from .sentinel import master_pool

# hiredis's own packer, as redis-py's connections use it when it is installed
# (Any: its stub types a command as a one-element tuple).
_hiredis_pack: Any = None
if HIREDIS_AVAILABLE:
    import hiredis

    _hiredis_pack = hiredis.pack_command

LEASE_PREFIX = "velro_lease:"
MemberSets = Sequence[tuple[str, str, "int | None"]]  # (made set key, member, TTL seconds or None): namespaces.track's writes
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class NotACounter:
    """What ``RedisTier.incr`` returns when INCRBY cannot add (a marker, never instantiated)."""


# Replaces a value only if it is still the bytes the client read, so the
# client can re-sign a frame (``touch`` with a new expiry, ``incr`` past 64
# bits) without a lock: a concurrent write makes it a no-op (0). Every frame is
# MAC'd header included, so Redis cannot rewrite one by itself.
# KEYS: value, lease; ARGV: old bytes, new bytes ('' = keep the value, set the
# TTL only), ttl ms (-1 = none, -2 = keep the current TTL), channel, message.
_REPLACE_IF_EQUAL = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local ms = tonumber(ARGV[3])
if ARGV[2] == '' then
  if ms == -1 then redis.call('PERSIST', KEYS[1]) elseif ms >= 0 then redis.call('PEXPIRE', KEYS[1], ms) end
elseif ms == -2 then redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
elseif ms == -1 then redis.call('SET', KEYS[1], ARGV[2])
else redis.call('SET', KEYS[1], ARGV[2], 'PX', ms) end
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""

# SET NX that announces itself: a process may still hold an L1 copy of a key
# Redis evicted or expired early, and a successful add must drop it. On
# failure it returns the bytes in the way, so the client can tell a value it
# cannot verify (a miss to it) from a real one. KEYS: value, lease; ARGV:
# data, ttl ms (-1 = none), channel, message.
_ADD = """
local ok
if tonumber(ARGV[2]) < 0 then ok = redis.call('SET', KEYS[1], ARGV[1], 'NX')
else ok = redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') end
if not ok then return {0, redis.call('GET', KEYS[1])} end
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return {1}
"""

# INCRBY only on an existing key: Django's contract wants ValueError for a
# missing key, and checking first from the client would race a delete. The
# result goes back as the stored text: INCRBY's integer reply becomes a Lua
# number (a double) inside a script, which turns 2**63 - 1 into -2**63.
_INCR_EXISTING = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('INCRBY', KEYS[1], ARGV[1])
return redis.call('GET', KEYS[1])
"""

# Deletes a value only if it is still the given bytes: retiring a corrupt entry
# must never delete a good value another writer stored in the meantime.
_DELETE_IF_EQUAL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Stores a loader's result only while its lease is still held (KEYS: value,
# lease; ARGV: token, data, ttl ms or -1, channel, message).
_STORE_IF_LEASED = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[3]) < 0 then redis.call('SET', KEYS[1], ARGV[2])
else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""

# set_many as one command: every SET, the DEL of every lease and the PUBLISH,
# run by Redis. A pipeline of 100 SETs costs redis-py packing and parsing 102
# commands; this script measured 3x faster end to end for 100 small values.
# KEYS: the n values, then their n leases; ARGV: the n values' data, ttl ms
# (-1 = none), channel, message. DEL in slices: Lua's unpack has a stack limit.
_SET_MANY = """
local n = #KEYS / 2
local ms = ARGV[n + 1]
if ms == '-1' then
  for i = 1, n do redis.call('SET', KEYS[i], ARGV[i]) end
else
  for i = 1, n do redis.call('SET', KEYS[i], ARGV[i], 'PX', ms) end
end
for i = n + 1, 2 * n, 500 do redis.call('DEL', unpack(KEYS, i, math.min(i + 499, 2 * n))) end
redis.call('PUBLISH', ARGV[n + 2], ARGV[n + 3])
return n
"""

# A read-through miss in one round trip: the value if Redis holds it, else
# our fill lease if nobody holds one. Atomic, so no fill can land between the
# miss and the lease (which a GET followed by SET NX has to look again for).
# KEYS: value, lease; ARGV: token, lease ms. Returns {value} or {false, taken}.
_VALUE_OR_LEASE = """
local value = redis.call('GET', KEYS[1])
if value then return {value} end
if redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2], 'NX') then return {false, 1} end
return {false, 0}
"""

# What touch and pttl read: a cache value and its PTTL, or, for a key holding a
# set, hash or sorted set (the collection helpers', which GET refuses with
# WRONGTYPE), 1 and its PTTL. KEYS: the key. Returns {value|1|false, pttl}.
_VALUE_AND_PTTL = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then return {false, -2} end
local pttl = redis.call('PTTL', KEYS[1])
if kind == 'string' then return {redis.call('GET', KEYS[1]), pttl} end
return {1, pttl}
"""
COLLECTION = 1  # what value_and_pttl answers in place of the value for a set, hash or sorted set

_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_pools: dict[tuple, redis.ConnectionPool] = {}
_pools_lock = threading.Lock()


def _new_lock_after_fork() -> None:
    global _pools_lock
    _pools_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_after_fork)


def pool_settings(options: TieredOptions) -> tuple:
    """The options that shape a data-path pool: a shared pool or client is kept per URL and these."""
    return (options.pool_size, options.pool_timeout, options.socket_timeout, options.socket_connect_timeout)


def connection_kwargs(options: TieredOptions) -> dict[str, Any]:
    """The data path's connection timeouts, one definition for every pool (sync, async, Cluster, Sentinel).

    A connection idle for 30 s is PINGed when it is next taken from the pool,
    so a server restarted meanwhile fails there and not mid-command.
    """
    return {
        "socket_timeout": options.socket_timeout,
        "socket_connect_timeout": options.socket_connect_timeout,
        "health_check_interval": 30,
    }


def pool_kwargs(options: TieredOptions) -> dict[str, Any]:
    """``connection_kwargs`` plus the POOL_SIZE bound and how long a caller waits for a free connection."""
    return {"max_connections": options.pool_size, "timeout": options.pool_timeout, **connection_kwargs(options)}


def shared_pool(url: str, options: TieredOptions) -> redis.ConnectionPool:
    """One pool per URL and pool settings per process; its connections check the incarnation (``tiers.incarnation``).

    With ``SENTINELS`` the URL names the master's service and the pool
    follows the master the sentinels report (``tiers.sentinel``).
    """
    key: tuple = (url, *pool_settings(options))
    if options.sentinels:
        key += (options.sentinels, options.sentinel_kwargs)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None and options.sentinels:
            pool = _pools[key] = master_pool(url, options, **connection_kwargs(options))
        elif pool is None:
            pool = _pools[key] = checked(BoundedPool.from_url(url, **pool_kwargs(options)))
        return pool


def direct_pool(client: redis.Redis) -> BoundedPool | None:
    """The pool ``RedisTier.get`` may send a GET on by itself, or None when only ``client.get`` is right.

    Only when a command is exactly one attempt with nothing around it: the
    connections retry nothing, no client-side cache answers, GET's reply has
    no callback, and the client holds no single connection of its own; and
    the pool is a ``BoundedPool`` (its checkout without the metrics question).
    """
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    retries = kwargs.get("retry") is not None or kwargs.get("retry_on_timeout") or kwargs.get("retry_on_error")
    if retries or pool.cache is not None or "GET" in client.response_callbacks or client.connection is not None:
        return None
    return pool if isinstance(pool, BoundedPool) else None


def ttl_ms(seconds: float | None) -> int | None:
    """Redis PX argument for a TTL in seconds; sub-millisecond TTLs round up."""
    if seconds is None:
        return None
    return max(1, int(seconds * 1000))


def add_members(pipe: Any, members: MemberSets) -> None:
    """Queue ``namespaces.track``'s writes: one SADD per set, its TTL set when new, else only lengthened."""
    by_set: dict[str, tuple[list[str], int | None]] = {}
    for set_key, member, ttl in members:
        held, longest = by_set.setdefault(set_key, ([], ttl))
        held.append(member)
        if ttl is None or (longest is not None and ttl > longest):
            by_set[set_key] = (held, ttl)
    for set_key, (held, ttl) in by_set.items():
        pipe.sadd(set_key, *held)
        if ttl is not None:
            pipe.expire(set_key, ttl, nx=True)  # a new set gets the TTL ...
            pipe.expire(set_key, ttl, gt=True)  # ... an older one keeps the longest


def lease_key(full: str) -> str:
    """The fill lease of a key, always in the key's own cluster hash slot.

    ``_STORE_IF_LEASED`` touches the value and its lease in one script, which
    Redis Cluster allows only within one slot. A key with a hash tag keeps it
    (the prefix has no braces); any other key is hashed whole, so the lease
    wraps it in braces to hash exactly the same text. One rule for a single
    Redis too, so a deployment can move to a cluster without a second naming.
    (``x`` and ``{x}`` share a lease: harmless, a lease is checked by its
    token, so the worst case is a fill not stored.)
    """
    start = full.find("{")
    if start >= 0 and full.find("}", start + 1) > start + 1:
        return LEASE_PREFIX + full
    if full and "}" not in full:
        return LEASE_PREFIX + "{" + full + "}"
    # A "}" would end the wrapping tag early (and "{}" hashes whole): tag with
    # other text of the same slot.
    return LEASE_PREFIX + "{" + _slot_tag(key_slot(full.encode())) + "}" + full


_slot_tags: dict[int, str] = {}


def _slot_tag(slot: int) -> str:
    """A short text hashing to ``slot``; the table is built on first need (about 50 ms)."""
    if not _slot_tags:
        table: dict[int, str] = {}
        number = 0
        while len(table) < SLOTS:
            table.setdefault(key_slot(str(number).encode()), str(number))
            number += 1
        _slot_tags.update(table)
    return _slot_tags[slot]


class RedisTier:
    """Bytes in and out of one Redis."""

    # A redis.Redis here, a ClusterClient (a RedisCluster behind __getattr__) in
    # ClusterRedisTier. Any rather than their union: no client decodes
    # responses, so replies are bytes, which redis-py's annotations (bytes | str)
    # cannot express, and the cluster client's commands are all __getattr__'s.
    client: Any

    def __init__(self, url: str, options: TieredOptions, channel: str) -> None:
        self.url = url
        self.channel = channel
        self.client = redis.Redis(connection_pool=shared_pool(url, options))
        self._register_scripts(self.client.register_script)
        self._direct_pool = direct_pool(self.client)
        # The connections pack commands with hiredis (redis-py's choice when it
        # is installed and no command_packer is given): GET is packed here alike.
        self._hiredis_packs = _hiredis_pack is not None and self.client.connection_pool.connection_kwargs.get("command_packer") is None

    def _register_scripts(self, register: Callable[[str], Any]) -> None:
        self._replace_if_equal = register(_REPLACE_IF_EQUAL)
        self._add = register(_ADD)
        self._incr = register(_INCR_EXISTING)
        self._delete_if_equal = register(_DELETE_IF_EQUAL)
        self._store_if_leased = register(_STORE_IF_LEASED)
        self._release_lease = register(_RELEASE_LEASE)
        self._set_many = register(_SET_MANY)
        self._value_or_lease = register(_VALUE_OR_LEASE)
        self._value_and_pttl = register(_VALUE_AND_PTTL)

    # -- reads --------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        """GET: a first read's round trip, sent on a pooled connection directly when that changes nothing.

        ``redis.Redis.execute_command`` wraps every command in a retry loop,
        two observability records and its response-callback lookup: about a
        tenth of a first read on loopback (``benchmarks/results/l2.md``). Our
        pools' connections retry nothing (no ``retry``, ``retry_on_timeout``
        or ``retry_on_error``: the breaker decides about failures), GET has no
        response callback, and no client-side cache is configured, so the
        direct path is that loop's single iteration: the connection
        disconnects itself on a socket error or timeout, as the loop's
        failure callback would, and goes back to the pool either way. Any
        other configuration takes redis-py's path (``direct_pool``), and so
        does every GET while redis-py's own metrics are on (its OpenTelemetry
        observability), so they still count each one.
        """
        pool = self._direct_pool
        if pool is None or redis_metrics_on():
            return self.client.get(key)
        conn = pool.checkout()  # get_connection, its own metrics question answered above
        try:
            if self._hiredis_packs:
                # What the connection's HiredisRespSerializer.pack makes of
                # ("GET", key), without its generator and argument rewriting.
                conn.send_packed_command([_hiredis_pack((b"GET", key))])
            else:
                conn.send_command("GET", key)
            return conn.read_response()
        except (redis.ConnectionError, redis.TimeoutError, TimeoutError):
            conn.disconnect()
            raise
        finally:
            pool.checkin(conn)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return self.client.mget(keys) if keys else []

    def has_key(self, key: str) -> bool:
        return bool(self.client.exists(key))

    # -- writes: one pipeline each, announcing the change -----------------------------
    def set_many(self, items: Iterable[tuple[str, bytes | int]], seconds: float | None, message: bytes) -> None:
        """Every value with its TTL, their leases retired, the change announced: one script, one round trip."""
        px = ttl_ms(seconds)
        keys: list[str] = []
        args: list[Any] = []  # the data, then the TTL, channel and message
        for key, data in items:
            keys.append(key)
            args.append(data)
        keys += [lease_key(key) for key in keys]  # built whole before it extends keys
        args += (-1 if px is None else px, self.channel, message)
        self._set_many(keys=keys, args=args)

    def add(self, key: str, data: bytes | int, seconds: float | None, message: bytes) -> tuple[bool, bytes | None]:
        """SET NX, announced when it succeeds; else (False, the bytes in the way)."""
        px = ttl_ms(seconds)
        reply = self._add(keys=[key, lease_key(key)], args=[data, -1 if px is None else px, self.channel, message])
        return (True, None) if reply[0] else (False, reply[1])

    def delete_many(self, keys: Sequence[str], message: bytes) -> int:
        """Delete keys and their leases; the number of keys that existed."""
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(*keys)
        pipe.delete(*(lease_key(key) for key in keys))
        pipe.publish(self.channel, message)
        return pipe.execute()[0]

    def delete_if_equal(self, key: str, data: bytes) -> bool:
        return bool(self._delete_if_equal(keys=[key], args=[data]))

    def replace_if_equal(self, key: str, old: bytes, new: bytes | int, ttl: int, message: bytes) -> bool:
        """Write ``new`` (b"" = only the TTL) if the key still holds ``old``; announced.

        ``ttl``: milliseconds, -1 for none, -2 to keep the current one.
        """
        args = [old, new, ttl, self.channel, message]
        return bool(self._replace_if_equal(keys=[key, lease_key(key)], args=args))

    def value_and_pttl(self, key: str) -> tuple[bytes | int | None, int]:
        """(value, PTTL ms) in one round trip; ``COLLECTION`` for the value of a set, hash or sorted set."""
        data, pttl = self._value_and_pttl(keys=[key])
        return data, int(pttl)

    def retime(self, key: str, seconds: float | None) -> bool:
        """A new TTL (None: none) for a key whose value is not a frame (a collection); whether it exists."""
        px = ttl_ms(seconds)
        if px is None:
            self.client.persist(key)
            return bool(self.client.exists(key))
        return bool(self.client.pexpire(key, px))

    def get_with_ttl(self, key: str) -> tuple[bytes | None, int]:
        """The value and its PTTL in ms (negative: none), in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(key)
        pipe.pttl(key)
        data, pttl = pipe.execute()
        return data, pttl

    def incr(self, key: str, delta: int) -> int | None | type[NotACounter]:
        """The new value, None when the key does not exist, or ``NotACounter``.

        ``NotACounter`` when INCRBY cannot do it (the value is not a raw
        64-bit integer, or the result or ``delta`` leave 64 bits): Python's
        integers are unbounded, as LocMemCache's are, so the backend then adds
        on the client and writes back with ``replace_if_equal``.
        """
        if not INT64_MIN <= delta <= INT64_MAX:
            return NotACounter
        try:
            stored = self._incr(keys=[key], args=[delta])
        except redis.ResponseError as exc:
            if "not an integer" in str(exc) or "overflow" in str(exc):
                return NotACounter
            raise
        return None if stored is None else int(stored)

    def clear(self, key_prefix: str, message: bytes) -> None:
        """Delete this cache's keys: by prefix when there is one, else FLUSHDB as Django does."""
        if not key_prefix:
            self.client.flushdb()
        else:
            escaped = re.sub(r"([\\*?\[\]])", r"\\\1", key_prefix)
            # The values, and the fill leases of loads in flight (both lease
            # spellings, see lease_key): a lease that survived the clear would
            # let its loader store a value read before it.
            for pattern in (f"{escaped}:*", f"{LEASE_PREFIX}{{{escaped}:*", f"{LEASE_PREFIX}{escaped}:*"):
                self._unlink_matching(pattern)
        self.client.publish(self.channel, message)

    def _unlink_matching(self, pattern: str) -> None:
        batch: list[bytes] = []
        for key in self.client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                self.client.unlink(*batch)
                batch.clear()
        if batch:
            self.client.unlink(*batch)

    # -- fill leases --------------------------------------------------------------------
    def acquire_lease(self, key: str, token: str, seconds: float) -> bool:
        return bool(self.client.set(lease_key(key), token, px=ttl_ms(seconds), nx=True))

    def value_or_lease(self, key: str, token: str, seconds: float) -> tuple[bytes | None, bool]:
        """(the value, False) when Redis holds it, else (None, whether ``token`` now holds the lease): one round trip."""
        reply = self._value_or_lease(keys=[key, lease_key(key)], args=[token, ttl_ms(seconds)])
        if isinstance(reply[0], bytes):
            return reply[0], False
        return None, bool(reply[1])  # Lua's false arrives as a null (RESP2) or a false (RESP3)

    def store_if_leased(
        self, key: str, token: str, data: bytes | int, seconds: float | None, message: bytes, members: MemberSets = ()
    ) -> bool:
        """Store under the lease; with ``members``, their sets are added to in the same round trip (a pipeline)."""
        px = ttl_ms(seconds)
        keys, args = [key, lease_key(key)], [token, data, -1 if px is None else px, self.channel, message]
        if not members:
            return bool(self._store_if_leased(keys=keys, args=args))
        pipe = self.client.pipeline(transaction=False)
        # EVALSHA by hand: a pipeline running a Script object first asks SCRIPT EXISTS, a round trip more.
        pipe.execute_command("EVALSHA", self._store_if_leased.sha, len(keys), *keys, *args)
        add_members(pipe, members)
        stored = pipe.execute(raise_on_error=False)[0]
        if isinstance(stored, redis.exceptions.NoScriptError):
            return bool(self._store_if_leased(keys=keys, args=args))  # a restarted Redis: loads the script, the sets are written
        if isinstance(stored, Exception):
            raise stored
        return bool(stored)

    def peek_fill(self, key: str) -> tuple[bytes | None, bool]:
        """The value if a filler stored it, and whether a lease is still held."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(key)
        pipe.exists(lease_key(key))
        data, leased = pipe.execute()
        return data, bool(leased)

    def release_lease(self, key: str, token: str) -> None:
        self._release_lease(keys=[lease_key(key)], args=[token])
