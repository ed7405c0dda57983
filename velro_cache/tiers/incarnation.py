"""Redis incarnations: a Redis that comes back older must not resurrect what was retired.

A redis-server restarted from an older RDB file, or a replica promoted after
it missed writes, holds keys that were overwritten or deleted since: old
namespace tokens, old authorization versions (so decisions from before a
revoke), old values. Nothing in those keys says they are old, so the check is
on the server instead. Every start gives a Redis a new ``run_id`` (INFO
server), and a replica's differs from its master's. Each database keeps the
``run_id`` of the incarnation whose data it holds in ``MARKER``; a snapshot
or a replica carries the marker of the server that wrote it, never the new
one's. So when a connection is established, before it carries any command,
one script compares the marker with the server's ``run_id`` and, when they
differ, empties the database and writes the new marker, atomically: no other
client's command can run between the check and the flush, and every later
connection finds the marker already right. Retiring everything is the only
safe answer, because which keys changed after the snapshot is unknown; the
price is a cold L2 after each Redis restart (the cache's database must be its
own, as for ``clear()`` without a key prefix).

On a cluster each primary is checked for itself (its marker hashes to one of
its own slots); a replica is not checked until it is a primary, by re-checking
before each command on a connection opened while it was a replica.

The process also remembers the ``run_id`` it last saw per server: a change
(or a flush it made itself) means the other processes' L1s and its own may
hold what the old incarnation held, so the L1 of every cache in the process is
dropped through the subscribers, synchronously, before the connection is used.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import redis
from redis.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.sentinel import SentinelManagedConnection

from ..exceptions import NotTheMaster, TooFewReplicas

logger = logging.getLogger("velro_cache.incarnation")

MARKER = "velro_cache:incarnation"

# KEYS[1]: the marker. Returns {run_id, 1 if this call retired the old data,
# 0 if the marker was already right or absent, -1 on a replica (nothing to
# check yet)}. An absent marker is written, not flushed for: velro_cache writes
# it before any key of its own, so a database (or a snapshot) without it holds
# none of our keys, and a first connection must not empty a database that other
# data shares.
_RETIRE_OLD_INCARNATION = """
local id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
if string.match(redis.call('INFO', 'replication'), 'role:(%a+)') ~= 'master' then return {id, -1} end
local marker = redis.call('GET', KEYS[1])
if marker == id then return {id, 0} end
if not marker then redis.call('SET', KEYS[1], id) return {id, 0} end
redis.call('FLUSHDB')
redis.call('SET', KEYS[1], id)
return {id, 1}
"""

_known: dict[str, bytes] = {}  # "host:port/db" -> the run_id this process last saw there
_demoted: set[str] = set()  # addresses last seen answering as a replica (warned about once)
# Addresses that refused a write with NOREPLICAS -> until when (monotonic) every
# command there fails at once, and when that was last warned about.
_refusing: dict[str, float] = {}
_refusal_warned: dict[str, float] = {}
REFUSING_FOR = 1.0
REFUSAL_WARNING_EVERY = 30.0
_known_lock = threading.Lock()
_subscribers: list[weakref.WeakMethod] = []


def _new_lock_after_fork() -> None:
    """A lock held by another parent thread at fork() would never be released in the child."""
    global _known_lock
    _known_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_after_fork)


def subscribe(callback: Callable[[], None]) -> None:
    """Call ``callback`` (a bound method, held weakly) whenever a server's incarnation changes."""
    _subscribers.append(weakref.WeakMethod(callback))


def _notify() -> None:
    for ref in list(_subscribers):
        callback = ref()
        if callback is None:
            _subscribers.remove(ref)
        else:
            callback()


def observe(address: str, run_id: bytes, retired: bool, cluster: bool = False) -> bool:
    """Record what a new connection found; True (and every L1 dropped) when it is a new incarnation."""
    with _known_lock:
        previous = _known.get(address)
        _known[address] = run_id
        others_known = len(_known) > 1
    # On a cluster a new address while others are known is a promoted node: new to us too.
    changed = retired or (previous is not None and previous != run_id) or (cluster and previous is None and others_known)
    if changed:
        logger.warning("velro_cache: Redis at %s is a new incarnation (run_id %s); dropping L1", address, run_id.decode())
        _notify()
    return changed


def not_the_master(address: str) -> NotTheMaster:
    """The error for a server found to be a replica; the first time in a row, one clear warning.

    Said once per demotion (until the address answers as a master again), not
    per failed call: a cache pointed at a demoted master fails every write,
    and a line per write would bury the one thing to fix.
    """
    with _known_lock:
        first = address not in _demoted
        _demoted.add(address)
    if first:
        logger.warning(
            "velro_cache: Redis at %s answers as a replica, not the master (a failover demoted it?): "
            "treating it as down, writes are held as invalidations until a master answers; "
            "with OPTIONS['SENTINELS'] the cache follows the master itself",
            address,
        )
    return NotTheMaster(address)


def too_few_replicas(address: str) -> TooFewReplicas:
    """The error for a master refusing writes (NOREPLICAS), which also fences it off for ``REFUSING_FOR``.

    Such a master still answers reads and PINGs, so without the fence a
    breaker probe would close the breaker, the next write reopen it, and so on
    for as long as the failover lasts; and its reads are suspect then, as a
    new master may already be taking writes. Fenced, every command there fails
    at once (an outage) until the fence lapses and the server is tried again.
    """
    now = time.monotonic()
    with _known_lock:
        _refusing[address] = now + REFUSING_FOR
        warn = now - _refusal_warned.get(address, -REFUSAL_WARNING_EVERY) >= REFUSAL_WARNING_EVERY
        if warn:
            _refusal_warned[address] = now
    if warn:
        logger.warning(
            "velro_cache: Redis at %s refuses writes (NOREPLICAS: fewer replicas than min-replicas-to-write, "
            "as while a failover leaves it); treating it as down, writes are held as invalidations",
            address,
        )
    return TooFewReplicas(address)


def _fenced(address: str) -> bool:
    """Whether ``address`` refused a write less than ``REFUSING_FOR`` ago."""
    until = _refusing.get(address)
    if until is None:
        return False
    if time.monotonic() < until:
        return True
    with _known_lock:
        _refusing.pop(address, None)
    return False


def _answered_as_master(address: str) -> None:
    if address in _demoted:
        with _known_lock:
            _demoted.discard(address)
        logger.warning("velro_cache: Redis at %s answers as the master again", address)


def connection_address(conn: Any) -> str:
    """``host:port/db`` (or the socket path) of a sync or async connection: what warnings and the fencing name."""
    return f"{getattr(conn, 'host', getattr(conn, 'path', '?'))}:{getattr(conn, 'port', '')}/{getattr(conn, 'db', 0)}"


class IncarnationCheck:
    """The check every velro_cache connection runs on connect (a mixin over redis-py's connections).

    On a single Redis (not a cluster node) the server must also be the
    master: a replica is refused with ``NotTheMaster``, on connect and on a
    READONLY reply later (a master demoted under an open connection), so a
    demoted master is an outage to the breaker, never a place writes are lost.
    """

    _velro_replica = False
    _velro_cluster = False
    _velro_checking = False  # the check's own commands must not trigger it again

    def _velro_marker(self) -> str | None:
        """The marker key on this server, or None when it owns nothing to check."""
        return MARKER

    def _velro_address(self) -> str:
        return connection_address(self)

    def _velro_check(self) -> None:
        conn: Any = self
        marker = self._velro_marker()
        if marker is None:
            self._velro_replica = True
            return
        conn.send_command("EVAL", _RETIRE_OLD_INCARNATION, 1, marker)
        run_id, outcome = conn.read_response()
        self._velro_replica = outcome == -1
        if self._velro_replica and not self._velro_cluster:
            self._velro_replica = False
            conn.disconnect()
            raise not_the_master(self._velro_address())
        if not self._velro_replica:
            _answered_as_master(self._velro_address())
            observe(self._velro_address(), run_id, outcome == 1, self._velro_cluster)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        """A READONLY reply means the server was demoted under this connection: not the master any more."""
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except redis.ReadOnlyError:
            if self._velro_cluster:
                raise
            conn: Any = self
            conn.disconnect()
            raise not_the_master(self._velro_address()) from None
        except redis.ResponseError as exc:
            if self._velro_cluster or not str(exc).startswith("NOREPLICAS"):
                raise
            conn = self
            conn.disconnect()
            raise too_few_replicas(self._velro_address()) from None

    def on_connect_check_health(self, check_health: bool = True) -> None:
        super().on_connect_check_health(check_health=check_health)  # type: ignore[misc]
        self._velro_check()

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        """A connection opened to a replica is checked again once that replica may have become a primary.

        So is one to a server another connection of this process found
        demoted: its pooled connections opened while it was the master would
        otherwise go on answering reads (and a breaker's PING) as a replica.
        """
        if _refusing and _fenced(self._velro_address()):
            raise TooFewReplicas(self._velro_address())
        if _demoted and not self._velro_checking and self._velro_address() in _demoted:
            self._velro_checking = True
            try:
                self._velro_check()
            finally:
                self._velro_checking = False
        if self._velro_replica:
            self._velro_replica = False
            try:
                self._velro_check()
            except redis.RedisError:
                self._velro_replica = True
                raise
        super().send_packed_command(command, check_health)  # type: ignore[misc]


class IncarnationConnection(IncarnationCheck, Connection):
    """A TCP connection that refuses to serve an old incarnation's data."""


class SSLIncarnationConnection(IncarnationCheck, SSLConnection):
    """The same over TLS (``rediss://``)."""


class UnixIncarnationConnection(IncarnationCheck, UnixDomainSocketConnection):
    """The same over a unix socket (``unix://``)."""


class SentinelIncarnationConnection(IncarnationCheck, SentinelManagedConnection):
    """A connection to whichever server Sentinel names the master, checked like the others.

    redis-py's Sentinel connection asks the sentinels for the master's address
    on every connect and turns a READONLY reply into a reconnect; the check
    above adds the incarnation (a promoted replica is a new one) and refuses a
    replica that Sentinel still names the master in the moment of a failover.
    """


class ClusterIncarnationConnection(IncarnationConnection):
    """On a cluster node the marker must hash to a slot the node owns."""

    _velro_cluster = True

    def _velro_marker(self) -> str | None:
        conn: Any = self
        conn.send_command("CLUSTER", "NODES")
        return cluster_marker(conn.read_response())


def cluster_marker(nodes: Any) -> str | None:
    """The marker key for the node that answered ``CLUSTER NODES`` with ``nodes``; None for a replica or a node without slots.

    The marker hashes to the node's first slot, so each primary keeps its own
    (the sync and the async cluster connections both ask this).
    """
    text = nodes.decode() if isinstance(nodes, bytes) else str(nodes)
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 8 and "myself" in fields[2] and "master" in fields[2]:
            first = fields[8].lstrip("[").split("-")[0]
            if first.isdigit():
                from .redis import _slot_tag

                return MARKER + ":{" + _slot_tag(int(first)) + "}"
    return None


_CLASSES: dict[type, type] = {
    Connection: IncarnationConnection,
    SSLConnection: SSLIncarnationConnection,
    UnixDomainSocketConnection: UnixIncarnationConnection,
}


def checked(pool: redis.ConnectionPool) -> redis.ConnectionPool:
    """``pool`` with its connections replaced by incarnation-checking ones of the same kind."""
    pool.connection_class = _CLASSES.get(pool.connection_class, pool.connection_class)
    return pool


def checked_client(url: str, **kwargs: Any) -> redis.Redis:
    """``redis.Redis.from_url`` whose connections run the incarnation check."""
    return redis.Redis.from_pool(checked(redis.ConnectionPool.from_url(url, **kwargs)))
