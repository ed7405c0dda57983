"""L2 for the async API: the same bytes, scripts and pipelines as ``RedisTier``, on ``redis.asyncio``.

Every method here answers exactly as its namesake on ``RedisTier`` does (the
Lua scripts are the same objects, the coherence message rides in the write's
own pipeline), so an ``aset`` and a ``set`` are indistinguishable to Redis and
to every other process. Only the I/O differs: a coroutine awaits the socket
instead of a thread blocking on it.

A ``redis.asyncio`` connection belongs to the event loop that opened it, so
clients are kept per running loop (and per sync tier, i.e. per cache
configuration and process): ``tier_for`` makes one on a loop's first call,
and forgets those of closed loops, whose sockets the garbage collector then
closes. A forked child starts with none, as it starts with no sync pool
either.

Connections run the incarnation check on connect, as the sync pool's do
(``tiers.incarnation``): a Redis that came back older is retired before an
async caller reads from it.

A Redis Cluster has its own async tier (``tiers.acluster``), kept here per
loop like these. Sentinel is this tier on a pool that asks redis.asyncio's
Sentinel for the master (``_sentinel_pool``), so no deployment hops to a
worker thread for an L2 call.

What is shared with ``RedisTier`` is imported, not copied: the scripts, the
pool limits (``pool_kwargs``), the TTL and lease-key rules. The pipeline
bodies (``set_many``, ``add``, ...) are written again with ``await``
deliberately: redis.asyncio's pipeline is another class, and a body shared
through a callback would cost every sync write a closure.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

from ..exceptions import TooFewReplicas
from ..options import TieredOptions
from . import incarnation
from .incarnation import _RETIRE_OLD_INCARNATION, MARKER, _answered_as_master, connection_address, not_the_master, observe, too_few_replicas
from .redis import (
    _ADD,
    _DELETE_IF_EQUAL,
    _INCR_EXISTING,
    _RELEASE_LEASE,
    _REPLACE_IF_EQUAL,
    _STORE_IF_LEASED,
    _VALUE_AND_PTTL,
    _VALUE_OR_LEASE,
    INT64_MAX,
    INT64_MIN,
    LEASE_PREFIX,
    NotACounter,
    RedisTier,
    lease_key,
    pool_kwargs,
    ttl_ms,
)


class AsyncIncarnationCheck:
    """The incarnation check of ``tiers.incarnation.IncarnationCheck``, for ``redis.asyncio`` connections."""

    _velro_replica = False
    _velro_cluster = False
    _velro_checking = False  # the check's own commands must not trigger it again

    def _velro_address(self) -> str:
        return connection_address(self)

    async def _velro_marker(self) -> str | None:
        """The marker key on this server, or None when it owns nothing to check (a cluster replica)."""
        return MARKER

    async def _velro_check(self) -> None:
        conn: Any = self
        marker = await self._velro_marker()
        if marker is None:
            self._velro_replica = True
            return
        await conn.send_command("EVAL", _RETIRE_OLD_INCARNATION, 1, marker)
        run_id, outcome = await conn.read_response()
        self._velro_replica = outcome == -1
        if self._velro_replica and not self._velro_cluster:
            # As the sync check: a replica is not where a write can go (a
            # demoted master, or one Sentinel still names in a failover's
            # moment), so it is an outage to the breaker, never a write lost.
            self._velro_replica = False
            await conn.disconnect()
            raise not_the_master(self._velro_address())
        if not self._velro_replica:
            _answered_as_master(self._velro_address())
            observe(self._velro_address(), run_id, outcome == 1, self._velro_cluster)

    async def on_connect_check_health(self, check_health: bool = True) -> None:
        await super().on_connect_check_health(check_health=check_health)  # type: ignore[misc]
        await self._velro_check()

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        """As the sync check: READONLY (demoted under this connection) is "not the master", NOREPLICAS "too few replicas".

        Both are outages to the breaker, never a refused write a caller is told
        nothing about while other processes read the value it replaced. Under
        a Sentinel connection, redis.asyncio turns READONLY into a
        ConnectionError itself, and reconnects to the new master.
        """
        try:
            return await super().read_response(*args, **kwargs)  # type: ignore[misc]
        except redis.ReadOnlyError:
            if self._velro_cluster:
                raise
            await self._velro_drop()
            raise not_the_master(self._velro_address()) from None
        except redis.ResponseError as exc:
            if self._velro_cluster or not str(exc).startswith("NOREPLICAS"):
                raise
            await self._velro_drop()
            raise too_few_replicas(self._velro_address()) from None

    async def _velro_drop(self) -> None:
        conn: Any = self
        await conn.disconnect()

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        """A connection opened to a replica is checked again once that replica may have become a primary.

        So is one to a server another connection of this process found
        demoted, and a master fenced off for refusing writes (NOREPLICAS) is
        refused for that while, as ``tiers.incarnation`` does for sync ones.
        """
        address = self._velro_address()
        if incarnation._refusing and incarnation._fenced(address):
            raise TooFewReplicas(address)
        if incarnation._demoted and not self._velro_checking and address in incarnation._demoted:
            self._velro_checking = True
            try:
                await self._velro_check()
            finally:
                self._velro_checking = False
        if self._velro_replica:
            self._velro_replica = False
            try:
                await self._velro_check()
            except redis.RedisError:
                self._velro_replica = True
                raise
        await super().send_packed_command(command, check_health)  # type: ignore[misc]


class AsyncIncarnationConnection(AsyncIncarnationCheck, Connection):
    """A TCP connection that refuses to serve an old incarnation's data."""


class AsyncSSLIncarnationConnection(AsyncIncarnationCheck, SSLConnection):
    """The same over TLS (``rediss://``)."""


class AsyncUnixIncarnationConnection(AsyncIncarnationCheck, UnixDomainSocketConnection):
    """The same over a unix socket (``unix://``)."""


class AsyncSentinelIncarnationConnection(AsyncIncarnationCheck, SentinelManagedConnection):
    """A connection to whichever server the sentinels name the master, checked like the others.

    redis.asyncio's Sentinel connection asks the sentinels for the master on
    every connect and turns a READONLY reply into a ConnectionError (an
    outage to the breaker) after which it reconnects to the new master; the
    check adds the incarnation, as ``tiers.incarnation``'s sync twin does.
    """


class AsyncBlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel's master discovery with the POOL_SIZE bound, waiting up to POOL_TIMEOUT (``tiers.sentinel``'s twin)."""


_CLASSES: dict[type, type] = {
    Connection: AsyncIncarnationConnection,
    SSLConnection: AsyncSSLIncarnationConnection,
    UnixDomainSocketConnection: AsyncUnixIncarnationConnection,
}


def _pool(url: str, options: TieredOptions) -> aioredis.ConnectionPool:
    """A pool with the sync pool's limits and timeouts (``tiers.redis.shared_pool``), for one loop.

    With ``SENTINELS``, ``url`` names the master's service and the pool
    follows the master the sentinels report, through a ``Sentinel`` of this
    loop's own (its connections to the sentinels belong to the loop too).
    """
    if options.sentinels:
        return _sentinel_pool(url, options)
    pool = aioredis.BlockingConnectionPool.from_url(url, **pool_kwargs(options))
    pool.connection_class = _CLASSES.get(pool.connection_class, pool.connection_class)
    return pool


def _sentinel_pool(url: str, options: TieredOptions) -> AsyncBlockingSentinelPool:
    parsed = redis.connection.parse_url(url)
    service = parsed.pop("host")
    parsed.pop("port", None)
    kwargs = pool_kwargs(options)
    sentinel_kwargs = {"socket_timeout": options.socket_timeout, "socket_connect_timeout": options.socket_connect_timeout}
    sentinel_kwargs.update(dict(options.sentinel_kwargs))
    manager = Sentinel(list(options.sentinels), sentinel_kwargs=sentinel_kwargs)
    return AsyncBlockingSentinelPool(service, manager, connection_class=AsyncSentinelIncarnationConnection, **kwargs, **parsed)


class AsyncRedisTier:
    """Bytes in and out of one Redis, awaited; the async twin of ``RedisTier``."""

    client: Any  # replies are bytes (no decoding), which redis-py's annotations cannot say

    def __init__(self, url: str, options: TieredOptions, channel: str) -> None:
        self.url = url
        self.channel = channel
        self.client = aioredis.Redis(connection_pool=_pool(url, options))
        self._register_scripts()

    def _register_scripts(self) -> None:
        """RedisTier._register_scripts' scripts but _SET_MANY (set_many below is a pipeline), on ``self.client``."""
        register = self.client.register_script
        self._replace_if_equal = register(_REPLACE_IF_EQUAL)
        self._add = register(_ADD)
        self._incr = register(_INCR_EXISTING)
        self._delete_if_equal = register(_DELETE_IF_EQUAL)
        self._store_if_leased = register(_STORE_IF_LEASED)
        self._release_lease = register(_RELEASE_LEASE)
        self._value_and_pttl = register(_VALUE_AND_PTTL)
        self._value_or_lease = register(_VALUE_OR_LEASE)

    # -- reads ------------------------------------------------------------------------
    async def get(self, key: str) -> bytes | None:
        return await self.client.get(key)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return await self.client.mget(keys) if keys else []

    # -- writes: one pipeline each, announcing the change -----------------------------
    async def set_many(self, items: Iterable[tuple[str, bytes | int]], seconds: float | None, message: bytes) -> None:
        px = ttl_ms(seconds)
        pipe = self.client.pipeline(transaction=False)
        keys = []
        for key, data in items:
            pipe.set(key, data, px=px)
            keys.append(lease_key(key))
        pipe.delete(*keys)
        pipe.publish(self.channel, message)
        await pipe.execute()

    async def add(self, key: str, data: bytes | int, seconds: float | None, message: bytes) -> tuple[bool, bytes | None]:
        px = ttl_ms(seconds)
        reply = await self._add(keys=[key, lease_key(key)], args=[data, -1 if px is None else px, self.channel, message])
        return (True, None) if reply[0] else (False, reply[1])

    async def delete_many(self, keys: Sequence[str], message: bytes) -> int:
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(*keys)
        pipe.delete(*(lease_key(key) for key in keys))
        pipe.publish(self.channel, message)
        return (await pipe.execute())[0]

    async def delete_if_equal(self, key: str, data: bytes) -> bool:
        return bool(await self._delete_if_equal(keys=[key], args=[data]))

    async def replace_if_equal(self, key: str, old: bytes, new: bytes | int, ttl: int, message: bytes) -> bool:
        args = [old, new, ttl, self.channel, message]
        return bool(await self._replace_if_equal(keys=[key, lease_key(key)], args=args))

    async def value_and_pttl(self, key: str) -> tuple[bytes | int | None, int]:
        """As ``RedisTier.value_and_pttl``: ``COLLECTION`` in place of the value of a set, hash or sorted set."""
        data, pttl = await self._value_and_pttl(keys=[key])
        return data, int(pttl)

    async def retime(self, key: str, seconds: float | None) -> bool:
        """As ``RedisTier.retime``: a new TTL for a key that holds no frame (a collection)."""
        px = ttl_ms(seconds)
        if px is None:
            await self.client.persist(key)
            return bool(await self.client.exists(key))
        return bool(await self.client.pexpire(key, px))

    async def get_with_ttl(self, key: str) -> tuple[bytes | None, int]:
        pipe = self.client.pipeline(transaction=False)
        pipe.get(key)
        pipe.pttl(key)
        data, pttl = await pipe.execute()
        return data, pttl

    async def incr(self, key: str, delta: int) -> int | None | type[NotACounter]:
        """As ``RedisTier.incr``: the new value, None for a missing key, or ``NotACounter``."""
        if not INT64_MIN <= delta <= INT64_MAX:
            return NotACounter
        try:
            stored = await self._incr(keys=[key], args=[delta])
        except redis.ResponseError as exc:
            if "not an integer" in str(exc) or "overflow" in str(exc):
                return NotACounter
            raise
        return None if stored is None else int(stored)

    async def clear(self, key_prefix: str, message: bytes) -> None:
        """As ``RedisTier.clear``: by prefix (values and both lease spellings), else FLUSHDB."""
        if not key_prefix:
            await self.client.flushdb()
        else:
            escaped = re.sub(r"([\\*?\[\]])", r"\\\1", key_prefix)
            for pattern in (f"{escaped}:*", f"{LEASE_PREFIX}{{{escaped}:*", f"{LEASE_PREFIX}{escaped}:*"):
                await self._unlink_matching(pattern)
        await self.client.publish(self.channel, message)

    async def _unlink_matching(self, pattern: str) -> None:
        batch: list[bytes] = []
        async for key in self.client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await self.client.unlink(*batch)
                batch.clear()
        if batch:
            await self.client.unlink(*batch)

    # -- fill leases --------------------------------------------------------------------
    async def acquire_lease(self, key: str, token: str, seconds: float) -> bool:
        return bool(await self.client.set(lease_key(key), token, px=ttl_ms(seconds), nx=True))

    async def value_or_lease(self, key: str, token: str, seconds: float) -> tuple[bytes | None, bool]:
        """As ``RedisTier.value_or_lease``: the value, else whether ``token`` now holds the lease; one round trip."""
        reply = await self._value_or_lease(keys=[key, lease_key(key)], args=[token, ttl_ms(seconds)])
        if isinstance(reply[0], bytes):
            return reply[0], False
        return None, bool(reply[1])

    async def store_if_leased(self, key: str, token: str, data: bytes | int, seconds: float | None, message: bytes) -> bool:
        px = ttl_ms(seconds)
        args = [token, data, -1 if px is None else px, self.channel, message]
        return bool(await self._store_if_leased(keys=[key, lease_key(key)], args=args))

    async def peek_fill(self, key: str) -> tuple[bytes | None, bool]:
        pipe = self.client.pipeline(transaction=False)
        pipe.get(key)
        pipe.exists(lease_key(key))
        data, leased = await pipe.execute()
        return data, bool(leased)

    async def release_lease(self, key: str, token: str) -> None:
        await self._release_lease(keys=[lease_key(key)], args=[token])


# loop -> sync tier -> its async twin on that loop. The loops are held
# strongly: a loop's connections refer to it, so a weak key would never die.
# Closed loops are swept out whenever a new loop makes its first call, which
# leaves their clients to the garbage collector (closing their sockets).
_tiers: dict[asyncio.AbstractEventLoop, weakref.WeakKeyDictionary[Any, Any]] = {}
_tiers_lock = threading.Lock()


def tier_for(sync_tier: RedisTier, options: TieredOptions) -> Any:
    """The async tier for ``sync_tier`` on the running loop, made on the loop's first call."""
    loop = asyncio.get_running_loop()
    per_loop = _tiers.get(loop)
    tier = per_loop.get(sync_tier) if per_loop is not None else None
    if tier is None:
        with _tiers_lock:
            if loop not in _tiers:
                _sweep_closed_loops()
            per_loop = _tiers.setdefault(loop, weakref.WeakKeyDictionary())
            tier = per_loop.get(sync_tier)
            if tier is None:
                tier = per_loop[sync_tier] = _new_tier(sync_tier, options)
    return tier


def _sweep_closed_loops() -> None:
    """Forget the clients of loops that were closed (``asyncio.run`` ended, a thread's loop shut down).

    A tier that must be told its loop is gone (``AsyncClusterTier.loop_closed``) is told first.
    """
    for loop in [loop for loop in _tiers if loop.is_closed()]:
        for tier in list(_tiers[loop].values()):
            closed = getattr(tier, "loop_closed", None)
            if closed is not None:
                closed()
        del _tiers[loop]


def open_loops() -> int:
    """How many event loops hold clients now (tests: closed loops are let go)."""
    with _tiers_lock:
        _sweep_closed_loops()
        return len(_tiers)


def _new_tier(sync_tier: RedisTier, options: TieredOptions) -> Any:
    from .acluster import AsyncClusterTier
    from .cluster import ClusterRedisTier

    if isinstance(sync_tier, ClusterRedisTier):
        return AsyncClusterTier(sync_tier, options)
    return AsyncRedisTier(sync_tier.url, options, sync_tier.channel)


def _forget_after_fork() -> None:
    """A child's loops are its own: the parent's clients (and a lock another thread held) stay behind."""
    global _tiers, _tiers_lock
    _tiers = {}
    _tiers_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
