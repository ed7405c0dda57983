"""The background thread that sends this process's snapshot to Redis every ``TELEMETRY_INTERVAL`` seconds.

Publishing from a thread keeps the request path as it was: an L1 hit still
only bumps lock-free counters, and no request ever waits for telemetry. The
thread also runs the periodic jobs that want fresh combined figures (alert
evaluation: ``on_tick`` hooks). A forked child (gunicorn without --preload
forks after import) starts its own thread, since threads do not survive fork().
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable

from ..conf import settings
from . import store

logger = logging.getLogger("velro_cache.telemetry")

_lock = threading.Lock()
_thread: threading.Thread | None = None
_stop = threading.Event()
_owner_pid = 0
on_tick: list[Callable[[], None]] = []  # run after each publish, in the thread


def _run(stop: threading.Event) -> None:
    while not stop.wait(settings.TELEMETRY_INTERVAL):
        try:
            store.publish()
            for hook in list(on_tick):
                hook()
        except Exception:  # a bug in telemetry must not kill the thread for the process's life
            logger.exception("telemetry publish failed")


def start() -> bool:
    """Start the thread once per process (no-op when telemetry is off or no L2 is configured)."""
    global _thread, _stop, _owner_pid
    if not settings.TELEMETRY_INTERVAL or store.telemetry_url() is None:
        return False
    with _lock:
        if _thread is not None and _thread.is_alive() and _owner_pid == os.getpid():
            return True
        _stop = threading.Event()
        _thread = threading.Thread(target=_run, args=(_stop,), name="velro-telemetry", daemon=True)
        _owner_pid = os.getpid()
        _thread.start()
        return True


@atexit.register
def _publish_at_exit() -> None:
    """A last snapshot when a publishing process exits, so a short-lived one (``velro_demo``, a
    command, a worker recycled by ``--max-requests``) leaves its last seconds in the history."""
    if _thread is not None and _owner_pid == os.getpid():
        try:
            store.publish()
        except Exception:  # exiting: nothing to report to
            logger.debug("telemetry: final publish failed", exc_info=True)


def stop() -> None:
    """Stop the thread (tests; the thread is a daemon otherwise)."""
    global _thread
    with _lock:
        _stop.set()
        thread, _thread = _thread, None
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout=5)


def _restart_in_child() -> None:
    global _lock, _thread
    _lock = threading.Lock()
    store.reset_clients()
    if _thread is not None:  # it was running in the parent: run here too
        _thread = None
        start()


os.register_at_fork(after_in_child=_restart_in_child)
