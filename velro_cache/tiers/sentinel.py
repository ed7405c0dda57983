"""Finding the master through Redis Sentinel (``OPTIONS["SENTINELS"]``).

The settings follow django-redis: ``LOCATION`` is ``redis://<service>/<db>``,
where ``<service>`` is the name the sentinels monitor the master under, and
``SENTINELS`` lists the sentinels as (host, port) pairs. redis-py does the
discovery: each new connection asks the sentinels where the master is, a pool
drops its idle connections when the answer changes, and a READONLY reply (the
master was demoted under the connection) makes the connection reconnect to
the new one. velro_cache adds its incarnation check to every such connection
(``tiers.incarnation``): a promoted replica is a new incarnation, so the data
it may have missed is retired before it serves a read, and a server that
still answers as a replica is refused as ``NotTheMaster`` (an outage to the
breaker, retried) rather than written to.
"""

from __future__ import annotations

import threading
from typing import Any

import redis
from redis.sentinel import Sentinel, SentinelConnectionPool

from ..options import TieredOptions
from .incarnation import SentinelIncarnationConnection
from .pool import BoundedPool


class BlockingSentinelPool(SentinelConnectionPool, BoundedPool):
    """Sentinel's master discovery with the blocking ``POOL_SIZE`` limit every velro_cache pool has.

    SentinelConnectionPool only adds discovery over a plain ConnectionPool
    (which raises past its limit); with BlockingConnectionPool next in the
    order (as ``BoundedPool``, the single Redis's pool), a caller past the
    limit waits up to ``POOL_TIMEOUT`` as it does on a single Redis.
    """


_managers: dict[tuple, Sentinel] = {}
_managers_lock = threading.Lock()


def sentinel_manager(options: TieredOptions) -> Sentinel:
    """One redis-py ``Sentinel`` per process and set of sentinels: it remembers which sentinel answered last."""
    key = (options.sentinels, options.sentinel_kwargs, options.socket_timeout, options.socket_connect_timeout)
    with _managers_lock:
        manager = _managers.get(key)
        if manager is None:
            kwargs = {"socket_timeout": options.socket_timeout, "socket_connect_timeout": options.socket_connect_timeout}
            kwargs.update(dict(options.sentinel_kwargs))
            manager = _managers[key] = Sentinel(list(options.sentinels), sentinel_kwargs=kwargs)
        return manager


def master_pool(url: str, options: TieredOptions, *, blocking: bool = True, **connection: Any) -> SentinelConnectionPool:
    """A pool of connections to the master named by ``url``'s host, as the sentinels report it.

    ``connection`` sets the connections' timeouts; ``blocking`` picks the
    POOL_SIZE-bounded pool of the data path (the coherence listener opens
    its own small, unbounded one).
    """
    parsed = redis.connection.parse_url(url)
    service = parsed.pop("host")
    parsed.pop("port", None)
    parsed.update(connection)
    manager = sentinel_manager(options)
    if blocking:
        return BlockingSentinelPool(
            service,
            manager,
            connection_class=SentinelIncarnationConnection,
            max_connections=options.pool_size,
            timeout=options.pool_timeout,
            **parsed,
        )
    return SentinelConnectionPool(service, manager, connection_class=SentinelIncarnationConnection, **parsed)


def master_address(url: str, options: TieredOptions) -> tuple[str, int]:
    """Where the sentinels say the master of ``url``'s service is now (for reports and tests)."""
    return sentinel_manager(options).discover_master(redis.connection.parse_url(url)["host"])
