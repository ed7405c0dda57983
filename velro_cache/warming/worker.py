"""Warming a worker process at start, in the background, so it serves at once.

A worker that warmed before accepting requests would start seconds late and
a slow database would keep it down; so the warm-up runs in a daemon thread
with the plan's time budget, and requests are served meanwhile (a request
that arrives first simply fills what it reads, as without warming). Steps
for L1 run in every worker (each has its own L1); steps only for L2 run in
the one worker that takes the plan's Redis lock.

Hook it into the server's per-worker start:

- gunicorn: ``post_worker_init = velro_cache.warming.gunicorn_post_worker_init``
  in the gunicorn config file (``example_project/gunicorn.conf.py``);
- ASGI: ``velro_cache.warming.lifespan(application)`` wraps the Django ASGI
  application and starts the warm-up on ``lifespan.startup``
  (``example_project/example_project/asgi_lifespan.py``).

Both also start the worker's trigger listener (``velro_cache.warming.trigger``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .plan import Plan
from .run import WORKER, warm

logger = logging.getLogger("velro_cache.warming")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def warm_in_background(plan: Plan | str | None = None, *, budget: float | None = None) -> threading.Thread:
    """Start warming this worker in a daemon thread and return the thread (join it to wait)."""
    thread = threading.Thread(target=_warm_quietly, args=(plan, budget), name="velro-cache-warming", daemon=True)
    thread.start()
    return thread


def _warm_quietly(plan: Plan | str | None, budget: float | None) -> None:
    """``warm`` in worker mode; whatever goes wrong is logged, never raised into the server."""
    from django.db import connections

    try:
        warm(plan, mode=WORKER, budget=budget)
    except Exception:  # no plan declared, a broken cache alias: log, serve anyway
        logger.exception("warming this worker failed; it serves cold")
    finally:
        connections.close_all()  # this thread's connections: it is done with them


def gunicorn_post_worker_init(worker: Any) -> None:
    """A gunicorn ``post_worker_init`` hook: warm the loaded worker in the background and listen for triggers."""
    warm_in_background()
    _listen_quietly()


def _listen_quietly() -> None:
    from .trigger import listen

    try:
        listen()
    except Exception:  # triggers are an extra: a worker without them still serves
        logger.warning("warming triggers are not listened to in this worker", exc_info=True)


def lifespan(app: ASGIApp, plan: Plan | str | None = None, *, budget: float | None = None, triggers: bool = True) -> ASGIApp:
    """Wrap an ASGI application so ``lifespan.startup`` starts warming (Django's own ASGI app has no lifespan).

    ``triggers``: also listen for ``velro_cache.warming.trigger`` messages (they name declared plans).
    """

    async def application(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                warm_in_background(plan, budget=budget)
                if triggers:
                    _listen_quietly()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    return application


__all__ = ["gunicorn_post_worker_init", "lifespan", "warm_in_background"]
