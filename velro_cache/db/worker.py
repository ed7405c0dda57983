"""A debouncing background worker: many requests for the same job, one run, off the request path.

A burst of writes to a view's sources must cost one refresh, not one per
write, and no request may wait for it. So a request only *schedules* a key
with a delay; the first schedule fixes the deadline (later ones in the window
join it, so a steady stream of writes cannot postpone the refresh forever),
and one daemon thread per process runs each key when it is due. A key
scheduled again while it runs is run again afterwards: the running job may
have started before the new write committed.

The thread starts lazily on the first schedule, so management commands and
processes that never write start no thread, and a forked worker (gunicorn
``--preload``) starts its own instead of inheriting a dead one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)  # a job's key


class Debouncer(Generic[K]):
    """Run ``job(key)`` once per burst of ``schedule(key, delay)`` calls, in a background thread."""

    def __init__(self, job: Callable[[K], None], name: str = "velro-debouncer") -> None:
        self._job = job
        self._name = name
        self._reset()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        # A forked child inherits the parent's state but not its thread.
        self._cond = threading.Condition()
        self._due: dict[K, float] = {}
        self._running: set[K] = set()
        self._thread: threading.Thread | None = None

    def schedule(self, key: K, delay: float) -> None:
        """Run ``job(key)`` in ``delay`` seconds, unless it is already due sooner."""
        with self._cond:
            deadline = time.monotonic() + max(0.0, delay)
            if key not in self._due or deadline < self._due[key]:
                self._due[key] = deadline
            self._ensure_thread()
            self._cond.notify_all()

    def pending(self) -> set[K]:
        """The keys waiting for their deadline (what a test or the dashboard looks at)."""
        with self._cond:
            return set(self._due)

    def is_scheduled(self, key: K) -> bool:
        with self._cond:
            return key in self._due or key in self._running

    def run_now(self) -> None:
        """Make every pending key due at once (shutdown, tests, the command line)."""
        with self._cond:
            for key in self._due:
                self._due[key] = 0.0
            self._cond.notify_all()

    def wait_idle(self, timeout: float | None = None, ignore: Callable[[K], bool] | None = None) -> bool:
        """Block until nothing is pending or running (``ignore`` excludes keys, e.g. a
        recurring schedule); False if ``timeout`` passed first."""
        skip = ignore or (lambda key: False)

        def idle() -> bool:
            return not any(not skip(key) for key in (*self._due, *self._running))

        with self._cond:
            return self._cond.wait_for(idle, timeout)

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()

    def _next_due(self) -> K:
        with self._cond:
            while True:
                now = time.monotonic()
                ready = [key for key, deadline in self._due.items() if deadline <= now]
                if ready:
                    key = min(ready, key=self._due.__getitem__)
                    del self._due[key]
                    self._running.add(key)
                    return key
                timeout = min(self._due.values()) - now if self._due else None
                self._cond.wait(timeout)

    def _loop(self) -> None:
        while True:
            key = self._next_due()
            try:
                self._job(key)
            except Exception:  # one failed job must not stop the others
                log.exception("background job %r failed", key)
            finally:
                with self._cond:
                    self._running.discard(key)
                    self._cond.notify_all()
