"""A cross-service trigger: a message on Redis that asks every worker to warm now.

Another service (a deploy script, a data import, an admin action) calls
``trigger(steps=[...])``; every worker listening (``listen()``, started by the
gunicorn hook and the ASGI lifespan wrapper) runs those steps of the plan in
worker mode: L1 steps in each, L2-only steps in the one worker that takes this
round's lock (each message carries its own round id). ``trigger`` returns how
many workers received it.

The channel is Redis pub/sub on the cache's L2 (one channel per cache
``KEY_PREFIX``, so deployments sharing a Redis do not warm each other), on a
connection of its own. Only a single-Redis L2 (one ``redis://`` URL) is
supported; on Redis Cluster or without L2 ``trigger`` returns 0 and
``listen`` returns None, logged. A listener that loses Redis reconnects with a
growing pause and never raises into the worker.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

from ..invalidation.retirement import resolve_cache
from .run import WORKER, warm

logger = logging.getLogger("velro_cache.warming")

CHANNEL = "velro-cache:warming"
RETRY_START, RETRY_MAX = 0.5, 30.0


def channel_for(cache: Any) -> str:
    return f"{getattr(cache, 'key_prefix', '') or ''}:{CHANNEL}"


def _redis(cache: Any) -> Any:
    """A client of its own on the cache's single Redis, or None (no L2, or a cluster)."""
    import redis

    url = cache.stats().get("l2", {}).get("url") if hasattr(cache, "stats") else None
    if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
        logger.warning("warming triggers need an L2 on one Redis URL; this cache has %r", url)
        return None
    return redis.Redis.from_url(url, health_check_interval=30)


def trigger(steps: Iterable[str] | None = None, *, plan: str = "default", cache: Any = None) -> int:
    """Ask every listening worker to warm ``steps`` of ``plan`` (all steps: None); returns how many received it."""
    target = resolve_cache(cache)
    client = _redis(target)
    if client is None:
        return 0
    message = {"round": uuid.uuid4().hex, "plan": plan, "steps": None if steps is None else list(steps)}
    try:
        return int(client.publish(channel_for(target), json.dumps(message)))
    finally:
        client.close()


def listen(cache: Any = None) -> threading.Thread | None:
    """Start this worker's trigger listener (a daemon thread); None when triggers are not possible here."""
    target = resolve_cache(cache)
    client = _redis(target)
    if client is None:
        return None
    thread = threading.Thread(target=_listen_forever, args=(client, channel_for(target), target),
                              name="velro-cache-warming-trigger", daemon=True)
    thread.start()
    return thread


def _listen_forever(client: Any, channel: str, cache: Any) -> None:
    pause = RETRY_START
    while True:
        try:
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(channel)
            pause = RETRY_START
            for message in pubsub.listen():
                _handle(message.get("data"), cache)
        except Exception:  # Redis gone: try again later, never take the worker down
            logger.warning("warming trigger listener lost Redis; retrying in %.1f s", pause, exc_info=True)
            time.sleep(pause)
            pause = min(pause * 2, RETRY_MAX)


def _handle(data: Any, cache: Any) -> None:
    """Run one trigger's round; a bad message or a failing warm-up is logged, and the listener goes on."""
    from django.db import connections

    try:
        message = json.loads(data)
        warm(message.get("plan") or "default", mode=WORKER, only=message.get("steps"), cache=cache,
             round_id=str(message["round"]))
    except Exception:
        logger.warning("warming trigger %r not run", data, exc_info=True)
    finally:
        connections.close_all()


__all__ = ["channel_for", "listen", "trigger"]
