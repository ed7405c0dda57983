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


_NONE_LEFT: Any = object()


class BoundedPool(redis.BlockingConnectionPool):
    """redis-py's blocking pool (the ``POOL_SIZE`` bound, LIFO, waiting up to ``POOL_TIMEOUT``), checked out for less.

    Each checkout and return of redis-py's pool makes six observability
    records (connection counts by state, the wait time), each of which looks
    up whether metrics are on: a few microseconds per command, a tenth of a
    first read's time outside its round trip. While redis-py's metrics are
    off (``redis_metrics_on``) and no maintenance is in progress, these
    methods do the same checkout without them: the same queue (its get and
    put written out for the case without waiting), the same fork check,
    the same connect and stale-data check before a connection is handed
    out, the same return. Otherwise they are redis-py's own. (A
    connection checked out before metrics were turned on is not counted as
    in use, as redis-py's own counts miss the connections made before then.)
    """

    def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        if redis_metrics_on():
            return super().get_connection()
        return self.checkout()

    def release(self, connection: Any) -> None:
        if redis_metrics_on():
            return super().release(connection)
        return self.checkin(connection)

    def checkout(self) -> Any:
        """``get_connection`` once the caller knows redis-py's metrics are off (``RedisTier.get`` asks once for its GET)."""
        if self._in_maintenance:
            return super().get_connection()
        self._checkpid()
        # LifoQueue.get without its notify of not_full, which only a blocked
        # put() waits on, and nothing here puts blocking (returns use
        # put_nowait): an idle connection (or a free slot, None) is taken
        # under the queue's own mutex. Only when none is left does a caller
        # wait, in the queue's get, up to POOL_TIMEOUT.
        idle = self.pool
        connection = _NONE_LEFT
        if type(idle) is queue.LifoQueue:  # redis-py's default queue_class, whose items are idle.queue's
            with idle.mutex:
                if idle.queue:
                    connection = idle.queue.pop()
        if connection is _NONE_LEFT:
            try:
                connection = idle.get(block=True, timeout=self.timeout)
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
            self.checkin(connection)
            raise
        return connection

    def checkin(self, connection: Any) -> None:
        """``release`` once the caller knows redis-py's metrics are off."""
        if self._in_maintenance:
            return super().release(connection)
        self._checkpid()
        if not self.owns_connection(connection):
            # Made before a fork: its place is taken by a new one when needed.
            connection.disconnect()
            self.pool.put_nowait(None)
            return None
        if connection.should_reconnect():
            connection.disconnect()
        # LifoQueue.put_nowait written out (one call instead of four): the
        # same bound and the same wake-up of a caller waiting for a connection.
        idle = self.pool
        if type(idle) is not queue.LifoQueue:
            try:
                idle.put_nowait(connection)
            except queue.Full:
                pass  # not ours any more (the pool was reset meanwhile)
            return None
        with idle.mutex:
            if 0 < idle.maxsize <= len(idle.queue):
                return None  # Full: not ours any more (the pool was reset meanwhile)
            idle.queue.append(connection)
            idle.unfinished_tasks += 1
            idle.not_empty.notify()
        return None
