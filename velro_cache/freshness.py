"""Read-your-writes at request boundaries: a request sees every write that returned before it started.

Coherence messages reach another process's listener thread a little after the
writer's call returns (a millisecond, more on a busy worker whose listener
waits for the GIL). A request that starts in that gap, say the GET that
follows a PATCH answered by another server, would read the old value from its
L1. So when a request starts, each cache with an L2 sends one PING on its
subscription, and its L1 serves no hit until the listener has handled that
PONG (or a later one): Redis answers in order, so every invalidation
published before the PING has been applied by then, and the L1 is current as
of the request's start. Requests running at the same time share a PING sent
after they started. Past the cache's ``STALENESS_BOUND`` the wait ends and L1
serves no hit until a later PING is answered (the request reads L2), so a
stalled Redis costs a request at most the bound.

Under WSGI the request does not wait at its start: the PING goes out, and the
first L1 read that finds the L1 not yet trusted waits for the PONG
(``begin_current``), which has usually been handled by then if the request
read Redis first (its authorization versions): the two round trips overlap.
Under ASGI the view's L1 reads run on the event loop, which must not wait on
a thread's condition, so the receiver (run in a thread) waits before the view
runs (``confirm_current``).

Hooked to Django's ``request_started`` signal rather than a middleware: the
handlers (WSGI and ASGI) send it before any middleware runs, so every view is
covered, whatever the MIDDLEWARE order, including middleware that reads the
cache before its own (authorization). Cost: one PING per request for each
cache with an L2, none on L1 hits; the ``read_your_writes`` switch
(``velro_cache.switches``; setting ``VELRO_CACHE["READ_YOUR_WRITES"]``) turns
it off, for everyone or a percentage of clients. Code outside a request (management commands, Celery
tasks) calls ``confirm_current()`` where it needs the same guarantee.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings
from django.core.signals import request_started

from . import switches
from .tiers.process import begin_current, confirm_current

__all__ = ["confirm_current", "connect"]


def confirm_at_request_start(sender: Any = None, **kwargs: Any) -> None:
    """The ``request_started`` receiver: make this process's L1s current as of the request's start.

    Under WSGI the PING goes out and the request goes on; its first L1 read
    waits for the PONG if it has not been handled yet (``begin_current``).
    Under ASGI this receiver runs in a thread while the views' L1 reads run
    on the event loop, which must not wait on a thread's condition: there
    it waits here, as before.
    """
    if not switches.on(switches.READ_YOUR_WRITES, _client_of(kwargs)):
        return
    if "environ" in kwargs:
        begin_current()
    else:
        confirm_current()


def _client_of(signal_kwargs: dict[str, Any]) -> str | None:
    """Who makes the request, for the switch's rollout: the user is not known yet when a request starts,
    so their credentials stand in (the ``Authorization`` header, else the session cookie); None: anonymous."""
    environ = signal_kwargs.get("environ")
    if environ is not None:
        headers = {"authorization": environ.get("HTTP_AUTHORIZATION"), "cookie": environ.get("HTTP_COOKIE")}
    else:
        scope = signal_kwargs.get("scope") or {}
        raw = dict(scope.get("headers") or ())
        headers = {name: (raw.get(name.encode()) or b"").decode("latin-1") or None for name in ("authorization", "cookie")}
    if headers["authorization"]:
        return headers["authorization"]
    name = django_settings.SESSION_COOKIE_NAME + "="
    for part in (headers["cookie"] or "").split(";"):
        if part.strip().startswith(name):
            return part.strip()[len(name):]
    return None


def connect() -> None:
    """Connect the receiver once (``AppConfig.ready``)."""
    request_started.connect(confirm_at_request_start, dispatch_uid="velro_cache.freshness")
