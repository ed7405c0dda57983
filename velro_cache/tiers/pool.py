"""The data path's connection pool: redis-py's blocking pool, without its per-checkout metrics while they are off."""

from __future__ import annotations

import queue
from typing import Any

import redis
from redis.observability.providers import get_observability_instance


def redis_metrics_on() -> bool:
    """Whether redis-py records metrics (its observability initialized with telemetry on), as its recorder decides."""
    manager = get_observability_instance().get_provider_manager()
    return manager is not None and bool(manager.config.enabled_telemetry)


class BoundedPool(redis.BlockingConnectionPool):
    """redis-py's blocking pool (the ``POOL_SIZE`` bound, LIFO, waiting up to ``POOL_TIMEOUT``), checked out for less.

    Each checkout and return of redis-py's pool makes six observability
    records (connection counts by state, the wait time), each of which looks
    up whether metrics are on: a few microseconds per command, a tenth of a
    first read's time outside its round trip. While redis-py's metrics are
    off (``redis_metrics_on``) and no maintenance is in progress, these
    methods do the same checkout without them: the same queue, the same
    fork check, the same connect and stale-data check before a connection
    is handed out, the same return. Otherwise they are redis-py's own. (A
    connection checked out before metrics were turned on is not counted as
    in use, as redis-py's own counts miss the connections made before then.)
    """

    def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        if self._in_maintenance or redis_metrics_on():
            return super().get_connection()
        self._checkpid()
        try:
            connection = self.pool.get(block=True, timeout=self.timeout)
        except queue.Empty:
            raise redis.ConnectionError("No connection available.") from None
        if connection is None:
            connection = self.make_connection()
        try:
            connection.connect()
            # A pooled connection must have nothing to read: a reply left
            # over, or a socket the server closed. Reconnect once; then fail.
            try:
                if connection.can_read() and self.cache is None and not self.maint_notifications_enabled():
                    raise redis.ConnectionError("Connection has data")
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                connection.disconnect()
                connection.connect()
                if connection.can_read() and self.cache is None and not self.maint_notifications_enabled():
                    raise redis.ConnectionError("Connection not ready") from None
        except BaseException:
            self.release(connection)
            raise
        return connection

    def release(self, connection: Any) -> None:
        if self._in_maintenance or redis_metrics_on():
            return super().release(connection)
        self._checkpid()
        if not self.owns_connection(connection):
            # Made before a fork: its place is taken by a new one when needed.
            connection.disconnect()
            self.pool.put_nowait(None)
            return None
        if connection.should_reconnect():
            connection.disconnect()
        try:
            self.pool.put_nowait(connection)
        except queue.Full:
            pass  # not ours any more (the pool was reset meanwhile)
        return None
