"""L2 for the async API on a Redis Cluster: ``ClusterRedisTier``'s semantics on ``redis.asyncio.cluster``.

Each method answers as its namesake on ``ClusterRedisTier`` does, and for the
same reasons (read ``tiers.cluster``'s docstring first): many-key reads are one
MGET per slot, pipelined so each node is asked once; writes are a pipeline
redis-py groups by node, one key per DEL; a key and its lease share a slot, so
the two-key scripts run on one node; the coherence message goes out after the
write is acknowledged, through the node this process's listener subscribes
through (``announce_order``), and scripts that published on the key's own node
are echoed there (``echo_needed``); keys other processes announced as held are
misses (the ``HeldKeys`` of the process, shared with the sync tier); a write
that failed is announced as held by ``announce_held``. Only the I/O differs:
a coroutine awaits ``redis.asyncio.cluster.RedisCluster`` instead of a worker
thread blocking on the sync client (what this replaced; ``benchmarks.async_paths`` keeps it as its baseline).

One client per event loop and sync tier, kept by ``tiers.aredis.tier_for``
exactly as the single-Redis async clients are (closed loops let go, none
inherited across fork). The client finds the slot map on its first command,
not when it is built, so a cache is usable while the cluster is down.

Two things redis.asyncio's cluster client does differently from the sync one:

* A node's connections are not a blocking pool: past ``max_connections`` a
  command fails with MaxConnectionsError, a ConnectionError, which the breaker
  would count as an outage under a burst of coroutines. So each tier bounds
  its calls in flight to ``POOL_SIZE`` (one call holds at most one connection
  per node), and a call waits up to ``POOL_TIMEOUT`` for a turn, as a sync
  caller waits for a pooled connection.
* Its constructor has no ``connection_class``; the incarnation-checking
  connections are put in its node settings before any node is connected.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from functools import wraps
from typing import Any, Concatenate, ParamSpec, TypeVar

import redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection, SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException

from ..options import TieredOptions
from .aredis import AsyncIncarnationCheck, AsyncRedisTier
from .cluster import ClusterRedisTier, announce_order, echo_needed, host_port
from .incarnation import cluster_marker
from .redis import connection_kwargs, lease_key, ttl_ms

T = TypeVar("T")
P = ParamSpec("P")


class AsyncClusterIncarnationCheck(AsyncIncarnationCheck):
    """On a cluster node the marker hashes to a slot the node owns (``incarnation.cluster_marker``)."""

    _velro_cluster = True

    async def _velro_marker(self) -> str | None:
        conn: Any = self
        await conn.send_command("CLUSTER", "NODES")
        return cluster_marker(await conn.read_response())


class AsyncClusterIncarnationConnection(AsyncClusterIncarnationCheck, Connection):
    """A TCP connection to a cluster node that refuses to serve an old incarnation's data."""


class AsyncSSLClusterIncarnationConnection(AsyncClusterIncarnationCheck, SSLConnection):
    """The same over TLS (``rediss://``)."""


_CLASSES: dict[type, type] = {
    Connection: AsyncClusterIncarnationConnection,
    SSLConnection: AsyncSSLClusterIncarnationConnection,
}


def build_async_cluster_client(urls: Sequence[str], options: TieredOptions) -> RedisCluster:
    """A ``redis.asyncio`` RedisCluster with ``build_cluster_client``'s settings: the same startup nodes, retry and coverage.

    The first URL gives the credentials and TLS for every node, as it does
    for the sync client; the others are extra startup nodes.
    """
    first, *others = urls
    settings: dict[str, Any] = dict(parse_url(first))
    ssl = settings.pop("connection_class", None) is SSLConnection
    client = RedisCluster(
        startup_nodes=[ClusterNode(*host_port(url)) for url in others],
        require_full_coverage=False,
        retry=Retry(NoBackoff(), 1),
        ssl=ssl,
        max_connections=options.pool_size,
        **connection_kwargs(options),
        **settings,
    )
    checked = _CLASSES[client.connection_kwargs["connection_class"]]
    client.connection_kwargs["connection_class"] = checked  # the nodes it discovers
    for node in client.nodes_manager.startup_nodes.values():
        node.connection_class = checked
    return client


def _bounded(
    method: Callable[Concatenate[AsyncClusterTier, P], Awaitable[T]],
) -> Callable[Concatenate[AsyncClusterTier, P], Coroutine[Any, Any, T]]:
    """Run ``method`` as one of the tier's calls in flight (``AsyncClusterTier._in_turn``)."""

    @wraps(method)
    async def bounded(self: AsyncClusterTier, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._in_turn(lambda: method(self, *args, **kwargs))

    return bounded


class AsyncClusterTier(AsyncRedisTier):
    """The async twin of ``ClusterRedisTier``; the single-key calls are ``AsyncRedisTier``'s, routed by slot.

    It holds its sync tier weakly: the sync tier is the key it is kept under
    (``tiers.aredis.tier_for``), and what it reads there (the held keys, where
    the listener subscribes) is the process's, not a copy.
    """

    def __init__(self, sync_tier: ClusterRedisTier, options: TieredOptions) -> None:
        self.url = sync_tier.url
        self.channel = sync_tier.channel
        self.held = sync_tier.held
        self._sync = weakref.ref(sync_tier)
        self.client = build_async_cluster_client(sync_tier.url.split(","), options)
        self._turns = asyncio.Semaphore(options.pool_size)
        self._turn_timeout = options.pool_timeout
        self._register_scripts()

    def loop_closed(self) -> None:
        """The client's loop was closed: let its sockets go with the garbage collector, quietly.

        Nothing can be awaited on a closed loop, so the client cannot be closed
        (``aclose``). Left as it is, redis-py reports it, and each node with a
        connection open, as unclosed through whichever loop is running when the
        garbage collector gets to it: an ERROR log line per client and node
        (348 lines for 100 ``asyncio.run`` calls), on a loop that has nothing
        to do with it. So the client is marked uninitialized and its
        connections unconnected (redis-py's own attributes, looked up with a
        default), and their transports close their sockets when collected, as
        the single-Redis clients' do.
        """
        client = self.client
        manager = getattr(client, "nodes_manager", None)
        nodes = [] if manager is None else [*manager.startup_nodes.values(), *manager.nodes_cache.values()]
        for node in nodes:
            for connection in getattr(node, "_connections", ()):
                connection._reader = connection._writer = None
        client._initialize = True

    async def _in_turn(self, call: Callable[[], Awaitable[T]]) -> T:
        """Await ``call()`` once a turn is free (waiting up to POOL_TIMEOUT) and the client knows the slot map.

        The slot map is read first, under the client's own lock, because a
        command issued while the client is still uninitialized is routed as if
        it had no key (redis-py decides the route before it initializes): a
        burst of such commands on a new loop went to random nodes, and their
        MOVED replies made the client close every connection, in-flight ones
        included (32 concurrent first gets: AttributeError from redis-py).
        ``initialize`` returns at once once the map is known.
        """
        turns = self._turns
        if turns.locked():  # wait_for costs a task per call: only when a wait is possible
            try:
                await asyncio.wait_for(turns.acquire(), self._turn_timeout)
            except TimeoutError:
                raise redis.ConnectionError("no cluster connection free within POOL_TIMEOUT") from None
        else:
            await turns.acquire()
        try:
            await self.client.initialize()
            return await call()
        finally:
            turns.release()

    # -- reads: a held key is a miss (no round trip) ----------------------------------------
    @_bounded
    async def get(self, key: str) -> bytes | None:
        return None if self.held and self.held.covers(key) else await self.client.get(key)

    @_bounded
    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        datas = await self.client.mget_nonatomic(keys)
        if self.held:
            datas = [None if self.held.covers(key) else data for key, data in zip(keys, datas)]
        return datas

    @_bounded
    async def value_and_pttl(self, key: str) -> tuple[bytes | int | None, int]:
        data, pttl = await super().value_and_pttl(key)
        return (None, -2) if isinstance(data, bytes) and self.held and self.held.covers(key) else (data, pttl)

    @_bounded
    async def retime(self, key: str, seconds: float | None) -> bool:
        return await super().retime(key, seconds)

    @_bounded
    async def get_with_ttl(self, key: str) -> tuple[bytes | None, int]:
        data, pttl = await super().get_with_ttl(key)
        return (None, -2) if data is not None and self.held and self.held.covers(key) else (data, pttl)

    @_bounded
    async def peek_fill(self, key: str) -> tuple[bytes | None, bool]:
        data, leased = await super().peek_fill(key)
        return (None, leased) if data is not None and self.held and self.held.covers(key) else (data, leased)

    # -- single-key calls, as on one Redis -----------------------------------------------------
    @_bounded
    async def delete_if_equal(self, key: str, data: bytes) -> bool:
        return await super().delete_if_equal(key, data)

    @_bounded
    async def incr(self, key: str, delta: int) -> Any:
        return await super().incr(key, delta)

    @_bounded
    async def acquire_lease(self, key: str, token: str, seconds: float) -> bool:
        return await super().acquire_lease(key, token, seconds)

    @_bounded
    async def value_or_lease(self, key: str, token: str, seconds: float) -> tuple[bytes | None, bool]:
        if self.held and self.held.covers(key):
            return None, await super().acquire_lease(key, token, seconds)  # held: a miss; the lease still decides who fills
        return await super().value_or_lease(key, token, seconds)

    @_bounded
    async def release_lease(self, key: str, token: str) -> None:
        await super().release_lease(key, token)

    # -- single-key scripts: they publish on the key's node; echoed on the subscribed one ------
    @_bounded
    async def add(self, key: str, data: bytes | int, seconds: float | None, message: bytes) -> tuple[bool, bytes | None]:
        added, in_the_way = await super().add(key, data, seconds, message)
        if added:
            await self._wrote([key], message)
        return added, in_the_way

    @_bounded
    async def replace_if_equal(self, key: str, old: bytes, new: bytes | int, ttl: int, message: bytes) -> bool:
        replaced = await super().replace_if_equal(key, old, new, ttl, message)
        if replaced:
            await self._wrote([key], message)
        return replaced

    @_bounded
    async def store_if_leased(self, key: str, token: str, data: bytes | int, seconds: float | None, message: bytes) -> bool:
        stored = await super().store_if_leased(key, token, data, seconds, message)
        if stored:
            await self._wrote([key], message)
        return stored

    async def _wrote(self, keys: Sequence[str], message: bytes) -> None:
        """As ``ClusterRedisTier._wrote``: release our holds, echo the script's PUBLISH where readers listen."""
        self.held.release(keys)
        node = self._subscribed_node()
        if echo_needed(node, self.client.get_node_from_key(keys[-1])):
            await self.client.publish(self.channel, message, target_nodes=node)

    # -- many-key writes: grouped by node, announced after ---------------------------------------
    @_bounded
    async def set_many(self, items: Iterable[tuple[str, bytes | int]], seconds: float | None, message: bytes) -> None:
        # ClusterRedisTier.set_many's loop with await (see AsyncRedisTier on why bodies are written twice).
        px = ttl_ms(seconds)
        pipe = self.client.pipeline(transaction=False)
        keys = []
        for key, data in items:
            pipe.set(key, data, px=px)
            pipe.delete(lease_key(key))
            keys.append(key)
        await self._write_then_announce(pipe.execute(), keys, message)

    @_bounded
    async def delete_many(self, keys: Sequence[str], message: bytes) -> int:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:  # a cluster pipeline takes one key per DEL
            pipe.delete(key)
            pipe.delete(lease_key(key))
        return sum((await self._write_then_announce(pipe.execute(), keys, message))[0::2])

    @_bounded
    async def clear(self, key_prefix: str, message: bytes) -> None:
        """As ``ClusterRedisTier.clear``: FLUSHDB and SCAN reach every primary, then the echo where readers listen."""
        await super().clear(key_prefix, message)
        self.held.release_prefix(key_prefix)
        await self._announce_anywhere(message)

    async def announce_held(self, message: bytes) -> bool:
        """As ``ClusterRedisTier.announce_held``: tell the others about a write this process holds back; whether a node took it."""
        try:
            await self._in_turn(lambda: self._announce_anywhere(message))
        except Exception:  # noqa: BLE001 - nothing answered
            return False
        return True

    # -- announcing -----------------------------------------------------------------------------
    async def _write_then_announce(self, write: Awaitable[Any], keys: Sequence[str], message: bytes) -> Any:
        """As ``ClusterRedisTier._write_then_announce``: nothing is published when the write fails."""
        result = await write
        self.held.release(keys)
        await self._announce_anywhere(message)
        return result

    def _subscribed_node(self) -> Any:
        """This client's node for where our listener subscribes; None between sessions or if it is not known."""
        sync_tier = self._sync()
        url = None if sync_tier is None else sync_tier._announce_node()
        if url is None:
            return None
        host, port = host_port(url)
        return self.client.get_node(host=host, port=port)

    async def _announce_anywhere(self, message: bytes) -> None:
        """PUBLISH through the subscribed node, else the first primary that answers."""
        error: Exception | None = None
        for node in announce_order(self._subscribed_node(), self.client.get_primaries()):
            try:
                await self.client.publish(self.channel, message, target_nodes=node)
                return
            except (redis.RedisError, RedisClusterException) as exc:
                error = exc
        if error is not None:
            raise error
