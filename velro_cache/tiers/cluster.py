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
  keep it in L1. So a write costs a second round trip here, sent to the node
  that took the write (it just answered). PUBLISH on any node reaches the
  subscribers of every node.
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
from .redis import RedisTier, lease_key, pool_kwargs, pool_settings, ttl_ms


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


class ClusterRedisTier(RedisTier):
    """``RedisTier`` on a Redis Cluster; single-key calls are inherited unchanged."""

    def __init__(self, urls: Sequence[str], options: TieredOptions, channel: str) -> None:
        self.url = ",".join(urls)
        self.channel = channel
        self.client = shared_cluster_client(urls, options)
        # Scripts as bytes need no encoder, so registering them builds no client.
        self._register_scripts(lambda text: Script(self.client, text.encode()))

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return self.client.mget_nonatomic(keys) if keys else []

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

        Its PUBLISH comes after the deletions, so only the failure path needs adding.
        """
        try:
            super().clear(key_prefix, message)
        except Exception:
            self._announce_quietly(message)
            raise

    # -- announcing -----------------------------------------------------------------------
    def _write_then_announce(self, write: Callable[[], Any], keys: Sequence[str], message: bytes) -> Any:
        """Run a write, then publish its message; on failure still tell the other processes.

        A failed write leaves the backend to replay it as an invalidation once
        the cluster answers; the other nodes may answer now, and hearing the
        message lets the other processes drop their copies meanwhile.
        """
        try:
            result = write()
        except Exception:
            self._announce_quietly(message)
            raise
        if keys:
            self.client.publish(self.channel, message, target_nodes=self.client.get_node_from_key(keys[-1]))
        else:
            self._announce_anywhere(message)
        return result

    def _announce_quietly(self, message: bytes) -> None:
        try:
            self._announce_anywhere(message)
        except Exception:  # nothing answers: the backend's replay will announce it
            pass

    def _announce_anywhere(self, message: bytes) -> None:
        """PUBLISH through the first primary that answers (plain PUBLISH routes to one fixed node)."""
        error: Exception | None = None
        for node in self.client.get_primaries():
            try:
                self.client.publish(self.channel, message, target_nodes=node)
                return
            except (redis.RedisError, RedisClusterException) as exc:
                error = exc
        if error is not None:
            raise error
