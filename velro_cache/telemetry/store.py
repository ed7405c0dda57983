"""Where the workers' snapshots live: Redis, next to the cache's L2.

Keys (one hash tag, so a Redis Cluster keeps them in one slot):

- ``velro:{telemetry}:worker:<id>``: a worker's latest snapshot, expiring after
  three publish intervals, so a dead worker leaves the view by itself;
- ``velro:{telemetry}:workers``: sorted set of worker ids by last publish;
- ``velro:{telemetry}:minute:<epoch minute>``: hash worker id -> its last
  snapshot in that minute, expiring after ``TELEMETRY_RETENTION`` minutes.

One pipeline per publish. The client is the telemetry's own, with short
timeouts and no breaker: it never runs on a request's path, and a reader that
cannot reach Redis gets this process's figures, flagged, instead of an error.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from ..conf import settings
from ..options import tiered_caches
from .combine import combine, minute_series
from .snapshot import process_snapshot, worker_id

logger = logging.getLogger("velro_cache.telemetry")

PREFIX = "velro:{telemetry}:"
WORKERS = PREFIX + "workers"
TIMEOUT = 0.5  # seconds: a dashboard with Redis down answers within about this


def worker_key(worker: str) -> str:
    return f"{PREFIX}worker:{worker}"


def minute_key(minute: int) -> str:
    return f"{PREFIX}minute:{minute}"


def telemetry_url() -> tuple[str, bool] | None:
    """The Redis the snapshots go to: the L2 of ``CACHE_ALIAS`` if it has one, else of the first TieredCache that does."""
    tiered = tiered_caches()
    for alias in (settings.CACHE_ALIAS, *tiered):
        options = tiered.get(alias)
        if options is not None and options.redis_urls:
            return options.redis_urls[0], options.cluster
    return None


_clients: dict[tuple[str, bool], Any] = {}


def client() -> Any | None:
    """The telemetry's Redis client (None without any L2 configured)."""
    target = telemetry_url()
    if target is None:
        return None
    known = _clients.get(target)
    if known is None:
        url, cluster = target
        kwargs = {"socket_timeout": TIMEOUT, "socket_connect_timeout": TIMEOUT}
        known = redis.RedisCluster.from_url(url, **kwargs) if cluster else redis.Redis.from_url(url, **kwargs)
        _clients[target] = known
    return known


def reset_clients() -> None:
    """Forget the clients (after fork: a child must not share its parent's sockets)."""
    _clients.clear()


def _dumps(snapshot: dict[str, Any]) -> str:
    # Quantiles may be inf; JSON has no inf, and the buckets carry what is needed.
    return json.dumps(snapshot, separators=(",", ":"), default=str, allow_nan=True)


def publish(snapshot: dict[str, Any] | None = None) -> bool:
    """Send this process's snapshot (latest and this minute's sample) in one round trip; False if Redis did not take it."""
    connection = client()
    if connection is None:
        return False
    snapshot = snapshot or process_snapshot()
    now = snapshot["taken_at"]
    minute = int(now // 60)
    payload = _dumps(snapshot)
    live_for = max(3 * settings.TELEMETRY_INTERVAL, 10)
    retention = settings.TELEMETRY_RETENTION * 60
    try:
        pipe = connection.pipeline(transaction=False)
        pipe.set(worker_key(snapshot["worker"]), payload, ex=math.ceil(live_for))
        pipe.zadd(WORKERS, {snapshot["worker"]: now})
        pipe.zremrangebyscore(WORKERS, "-inf", now - live_for)
        pipe.hset(minute_key(minute), snapshot["worker"], payload)
        pipe.expire(minute_key(minute), retention + 60)
        pipe.execute()
    except redis.RedisError as error:
        logger.debug("telemetry not published: %s", error)
        return False
    return True


@dataclass
class Deployment:
    """The combined view, and whether it really covers the deployment (``complete``) or only this process."""

    view: dict[str, Any]
    complete: bool
    error: str = ""
    snapshots: list[dict[str, Any]] = field(default_factory=list)


def _live_snapshots(connection: Any) -> list[dict[str, Any]]:
    live_for = max(3 * settings.TELEMETRY_INTERVAL, 10)
    workers = connection.zrangebyscore(WORKERS, time.time() - live_for, "+inf")
    if not workers:
        return []
    raw = connection.mget([worker_key(worker.decode() if isinstance(worker, bytes) else worker) for worker in workers])
    return [json.loads(item) for item in raw if item]


def deployment(*, publish_first: bool = True) -> Deployment:
    """Every live worker's figures combined; this process's alone (``complete=False``) when Redis does not answer.

    ``publish_first`` sends this process's snapshot before reading, so the
    reader's own figures are current rather than up to an interval old.
    """
    own = process_snapshot()
    connection = client()
    if connection is None:
        return Deployment(combine([own]), complete=True, snapshots=[own])  # L1 only: one process is the deployment it has
    try:
        if publish_first:
            publish(own)
        snapshots = [snapshot for snapshot in _live_snapshots(connection) if snapshot.get("worker") != own["worker"]]
    except (redis.RedisError, ValueError) as error:
        return Deployment(combine([own]), complete=False, error=str(error) or type(error).__name__, snapshots=[own])
    snapshots.append(own)
    return Deployment(combine(snapshots), complete=True, snapshots=snapshots)


def history(minutes: int = 60) -> list[dict[str, Any]]:
    """The last ``minutes`` minutes, one point per minute, every worker summed (empty when Redis does not answer)."""
    connection = client()
    if connection is None:
        return []
    now_minute = int(time.time() // 60)
    wanted = range(now_minute - minutes, now_minute + 1)
    try:
        pipe = connection.pipeline(transaction=False)
        for minute in wanted:
            pipe.hgetall(minute_key(minute))
        answers = pipe.execute()
    except redis.RedisError:
        return []
    samples = {
        minute: {key.decode() if isinstance(key, bytes) else key: json.loads(value) for key, value in answer.items()}
        for minute, answer in zip(wanted, answers)
        if answer
    }
    return minute_series(samples)

__all__ = ["Deployment", "deployment", "history", "publish", "worker_id"]
