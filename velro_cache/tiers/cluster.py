"""L2 on a Redis Cluster: the same bytes as ``RedisTier``, spread over hash slots.

What changes from one Redis, and why:

* Reads of many keys are one MGET per slot, pipelined so each node is asked
  once (``mget_nonatomic``); writes are one pipeline whose commands redis-py
  groups by node. A key and its fill lease share a slot (``lease_key``), so
  the two-key Lua scripts run on one node as they must.
* The coherence message goes out only after the write is acknowledged. On one
  Redis the PUBLISH rides in the write's own pipeline, executed after the
  write; across nodes nothing orders a PUBLISH on one node after a SET on
  another, and a process hearing it early could re-read the old value and
  keep it in L1. So a write costs a second round trip here. PUBLISH on any
  node reaches the subscribers of every node.
* Every coherence message goes out through the node this process's listener
  subscribes through (every process with the same LOCATION subscribes through
  the same first node), not the node that took the write: a PUBLISH on one
  node reaches another node's subscribers over the cluster bus, later and
  unordered with the PINGs they send there, so a reader confirming its L1
  (read-your-writes, the staleness bound) could get its PONG before the
  message. On the subscribed node the message is ahead of every PING sent
  after the write returned. The scripts that publish on the key's own node
  (``add``, ``replace_if_equal``, ``store_if_leased``) are echoed there.
* A write that could not reach its primary (a stopped or killed node, or any
  write while the breaker is open: one breaker guards the whole cluster) is
  announced as *held* (``HeldKeys``), before the writer's call returns.
  Other processes' listeners are confirmed by the subscribed node, which
  still answers, so nothing else would tell them: they drop their L1 copies
  and treat Redis's answers for those keys as misses until the writer's
  replay (a delete, announced) or any later write of the key releases them;
  the node that comes back still holds the value the held write replaced.
* ``clear`` flushes or scans every primary.
* The client is built on first use: RedisCluster's constructor asks the nodes
  for the slot map and raises when none answers, and a cache must be
  constructible while Redis is down (its calls then fail into the breaker).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.exceptions import ClusterDownError, RedisClusterException
from redis.retry import Retry

from ..options import TieredOptions
from .incarnation import ClusterIncarnationConnection
from .redis import MemberSets, RedisTier, add_members, lease_key, pool_kwargs, pool_settings, ttl_ms

HELD_LIMIT = 100_000  # held keys per process; past it every key counts as held until the next clear


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "localhost", parts.port or 6379


def node_url(template: str, host: str, port: int) -> str:
    """``template`` (scheme, credentials, query) pointed at another node."""
    parts = urlsplit(template)
    userinfo, _, _ = parts.netloc.rpartition("@")
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{address}" if userinfo else address))


def build_cluster_client(urls: Sequence[str], **connection: Any) -> RedisCluster:
    """A RedisCluster over startup nodes given as URLs.

    The first URL goes in as ``url`` because only then does redis-py honour
    ``connection_pool_class`` and the URL's credentials and TLS for every
    node; the others are extra startup nodes. ``require_full_coverage`` is
    off so a client can be built while some slots are down: calls to the
    rest keep working and the failing ones go to the breaker. One retry, as
    the breaker, not the client, decides when to try again; but one is
    needed: a call then survives a failover (the client re-reads the slot map
    after a connection error) without a miss, and the constructor's own
    COMMAND survives a dead default node (the retry picks another). Every
    connection checks its node's incarnation (``tiers.incarnation``).
    """
    first, *others = urls
    connection.setdefault("connection_class", ClusterIncarnationConnection)
    return RedisCluster(
        url=first,
        startup_nodes=[ClusterNode(*host_port(url)) for url in others],
        require_full_coverage=False,
        retry=Retry(NoBackoff(), 1),
        **connection,
    )


class ClusterClient:
    """A RedisCluster built on first use, whose ``ping`` speaks for the whole cluster.

    Everything else is the RedisCluster's own. The breaker's probe (and the
    coherence listener's recovery) call ``client.ping()``; on a cluster one
    node's PONG says nothing about the others, and every node still answers
    PING while the cluster refuses keyed commands with CLUSTERDOWN. So ping
    asks every primary and requires ``cluster_state:ok``.
    """

    def __init__(self, factory: Callable[[], RedisCluster]) -> None:
        self._factory = factory
        self._client: RedisCluster | None = None
        self._lock = threading.Lock()

    def real(self) -> RedisCluster:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._factory()
                client = self._client
        return client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real(), name)

    def ping(self) -> bool:
        client = self.real()
        client.ping(target_nodes=RedisCluster.PRIMARIES)
        state = client.cluster_info().get("cluster_state")
        if state != "ok":
            raise ClusterDownError(f"cluster_state is {state}")
        return True


_clients: dict[tuple, ClusterClient] = {}
_clients_lock = threading.Lock()


def _new_locks_after_fork() -> None:
    """A lock held by another parent thread at fork() would never be released in the child."""
    global _clients_lock
    _clients_lock = threading.Lock()
    for client in _clients.values():
        client._lock = threading.Lock()


os.register_at_fork(after_in_child=_new_locks_after_fork)


def shared_cluster_client(urls: Sequence[str], options: TieredOptions) -> ClusterClient:
    """One client per cluster and pool settings per process, as ``shared_pool`` is for one Redis.

    Each node gets a blocking pool of ``POOL_SIZE`` connections.
    """
    key = (tuple(urls), *pool_settings(options))
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = ClusterClient(
                lambda: build_cluster_client(urls, connection_pool_class=redis.BlockingConnectionPool, **pool_kwargs(options))
            )
        return client


def announce_order(subscribed: Any, primaries: Sequence[Any]) -> list[Any]:
    """Where a coherence message is tried, in order: the node our listener subscribes through, then every other primary.

    The sync and the async cluster tier both publish in this order (see the module docstring for why that node first).
    """
    others = [node for node in primaries if node != subscribed]
    return others if subscribed is None else [subscribed, *others]


def echo_needed(subscribed: Any, key_node: Any) -> bool:
    """Whether a script that published on ``key_node`` must be echoed on the node our listener subscribes through."""
    return subscribed is not None and subscribed != key_node


class HeldKeys:
    """Keys (and key prefixes) whose latest write another process holds back: Redis may hold what it replaced.

    Filled by the ``HOLD`` messages other processes' writes announce when
    they cannot reach their primary; emptied by any later announced write
    of the key (the writer's replay is one), and for prefixes by a clear of
    that prefix. A process started after a hold was announced does not know
    of it (docs/consistency.md).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.keys: set[str] = set()
        self.prefixes: set[str] = set()

    def hold(self, keys: Sequence[str], prefixes: Sequence[str] = ()) -> None:
        with self._lock:
            self.keys.update(keys)
            self.prefixes.update(prefixes)
            if len(self.keys) > HELD_LIMIT:
                self.keys.clear()
                self.prefixes.add("")

    def release(self, keys: Sequence[str]) -> None:
        if self.keys:  # nearly always empty: a write pays one truth test
            with self._lock:
                self.keys.difference_update(keys)

    def release_prefix(self, prefix: str) -> None:
        """A clear of ``prefix`` reached every primary: nothing under it is left to be stale."""
        with self._lock:
            self.keys = {key for key in self.keys if not key.startswith(prefix)}
            self.prefixes = {held for held in self.prefixes if not held.startswith(prefix)}

    def covers(self, key: str) -> bool:
        return key in self.keys or any(key.startswith(prefix) for prefix in self.prefixes)

    def __bool__(self) -> bool:
        return bool(self.keys or self.prefixes)


class ClusterRedisTier(RedisTier):
    """``RedisTier`` on a Redis Cluster; single-key calls are inherited, reads filtered through ``held``.

    ``announce_node``: the URL of the node this process's listener is
    subscribed through now (None between sessions), where messages go.
    """

    def __init__(
        self,
        urls: Sequence[str],
        options: TieredOptions,
        channel: str,
        held: HeldKeys | None = None,
        announce_node: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.url = ",".join(urls)
        self.channel = channel
        self.client = shared_cluster_client(urls, options)
        self.held = HeldKeys() if held is None else held  # not `or`: an empty one is falsy
        self._announce_node = announce_node
        # Scripts as bytes need no encoder, so registering them builds no client.
        self._register_scripts(lambda text: Script(self.client, text.encode()))

    # -- reads: a held key is a miss (no round trip) ----------------------------------------
    def get(self, key: str) -> bytes | None:
        return None if self.held and self.held.covers(key) else self.client.get(key)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        datas = self.client.mget_nonatomic(keys)
        if self.held:
            datas = [None if self.held.covers(key) else data for key, data in zip(keys, datas)]
        return datas

    def has_key(self, key: str) -> bool:
        return not (self.held and self.held.covers(key)) and super().has_key(key)

    def value_and_pttl(self, key: str) -> tuple[bytes | int | None, int]:
        data, pttl = super().value_and_pttl(key)
        return (None, -2) if isinstance(data, bytes) and self.held and self.held.covers(key) else (data, pttl)

    def get_with_ttl(self, key: str) -> tuple[bytes | None, int]:
        data, pttl = super().get_with_ttl(key)
        return (None, -2) if data is not None and self.held and self.held.covers(key) else (data, pttl)

    def peek_fill(self, key: str) -> tuple[bytes | None, bool]:
        data, leased = super().peek_fill(key)
        return (None, leased) if data is not None and self.held and self.held.covers(key) else (data, leased)

    # -- single-key scripts: they publish on the key's node; echoed on the subscribed one ------
    def add(self, key: str, data: bytes | int, seconds: float | None, message: bytes) -> tuple[bool, bytes | None]:
        added, in_the_way = super().add(key, data, seconds, message)
        if added:
            self._wrote([key], message)
        return added, in_the_way

    def replace_if_equal(self, key: str, old: bytes, new: bytes | int, ttl: int, message: bytes) -> bool:
        replaced = super().replace_if_equal(key, old, new, ttl, message)
        if replaced:
            self._wrote([key], message)
        return replaced

    def value_or_lease(self, key: str, token: str, seconds: float) -> tuple[bytes | None, bool]:
        if self.held and self.held.covers(key):
            return None, self.acquire_lease(key, token, seconds)  # a held key is a miss; the lease still decides who fills
        return super().value_or_lease(key, token, seconds)

    def store_if_leased(
        self, key: str, token: str, data: bytes | int, seconds: float | None, message: bytes, members: MemberSets = ()
    ) -> bool:
        # The member sets live in other slots: their own pipeline after the store (the cluster client splits it by node).
        stored = super().store_if_leased(key, token, data, seconds, message)
        if stored:
            self._wrote([key], message)
        if members:
            pipe = self.client.pipeline(transaction=False)
            add_members(pipe, members)
            try:
                pipe.execute(raise_on_error=False)
            except redis.RedisError:
                pass  # best effort, like namespaces.track: an untracked key ages out by its TTL
        return stored

    def _wrote(self, keys: Sequence[str], message: bytes) -> None:
        """A script took the write and published on the key's node: release our holds, echo it where readers listen."""
        self.held.release(keys)
        node = self._subscribed_node()
        if echo_needed(node, self.client.get_node_from_key(keys[-1])):
            self.client.publish(self.channel, message, target_nodes=node)

    def set_many(self, items: Iterable[tuple[str, bytes | int]], seconds: float | None, message: bytes) -> None:
        # Deliberately RedisTier.set_many's loop again rather than a shared one: a
        # cluster pipeline takes one key per DEL and cannot carry the PUBLISH,
        # so the leases are deleted per key and the announcement comes after.
        px = ttl_ms(seconds)
        pipe = self.client.pipeline(transaction=False)
        keys = []
        for key, data in items:
            pipe.set(key, data, px=px)
            pipe.delete(lease_key(key))
            keys.append(key)
        self._write_then_announce(pipe.execute, keys, message)

    def delete_many(self, keys: Sequence[str], message: bytes) -> int:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:  # a cluster pipeline takes one key per DEL
            pipe.delete(key)
            pipe.delete(lease_key(key))
        return sum(self._write_then_announce(pipe.execute, keys, message)[0::2])

    def clear(self, key_prefix: str, message: bytes) -> None:
        """``RedisTier.clear`` as it is: on a cluster its FLUSHDB and SCAN reach every primary.

        Its PUBLISH comes after the deletions; the echo on the subscribed node
        is added. A failed clear is announced as held by the backend.
        """
        super().clear(key_prefix, message)
        self.held.release_prefix(key_prefix)
        self._announce_anywhere(message)  # its PUBLISH went to the client's default node: again where readers listen

    def announce_held(self, message: bytes) -> bool:
        """Tell the other processes about writes this one holds back (``HeldKeys``); whether a node took it.

        Quietly: the write failed already, and its replay is announced anyway.
        """
        try:
            self._announce_anywhere(message)
        except Exception:  # noqa: BLE001 - nothing answered
            return False
        return True

    # -- announcing -----------------------------------------------------------------------
    def _write_then_announce(self, write: Callable[[], Any], keys: Sequence[str], message: bytes) -> Any:
        """Run a write, then publish its message where the readers listen.

        Nothing is published when the write fails: the backend announces it
        held (``ProcessState.hold_back``), and a drop published now would
        release the other processes' holds of these keys while a node still
        holds the old values (a replay that reached only some nodes).
        """
        result = write()
        self.held.release(keys)
        self._announce_anywhere(message)
        return result

    def _subscribed_node(self) -> Any:
        """The cluster client's node for where our listener subscribes; None between sessions or if it is not known."""
        url = self._announce_node()
        if url is None:
            return None
        host, port = host_port(url)
        return self.client.get_node(host=host, port=port)

    def _announce_anywhere(self, message: bytes) -> None:
        """PUBLISH through the subscribed node, else the first primary that answers (plain PUBLISH routes to one fixed node)."""
        error: Exception | None = None
        for node in announce_order(self._subscribed_node(), self.client.get_primaries()):
            try:
                self.client.publish(self.channel, message, target_nodes=node)
                return
            except (redis.RedisError, RedisClusterException) as exc:
                error = exc
        if error is not None:
            raise error
