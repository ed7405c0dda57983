"""Invalidate when the transaction commits, never before, and never for a rollback.

A write inside a transaction schedules its retirement with
``connection.on_commit``. Django drops on-commit callbacks registered inside
a savepoint that rolls back, and all of them when the transaction rolls back,
so a rolled-back write retires nothing, with no bookkeeping of ours.

Until the commit, the data the transaction wrote is "dirty" for this thread:
the cache holds the committed value, the transaction sees its own, so reads
of it must bypass the cache (neither serve the old value nor store the new,
uncommitted one). The dirty set is exactly the namespaces of this thread's
callbacks that are still waiting in their connection's ``run_on_commit``:
rolled back means gone from that list, committed means run.

Under Django's ``TestCase`` (and pytest-django's ``django_db``) each test runs
inside a transaction that never commits, so retirements wait, as in
production, for a commit that never comes: such tests use
``TestCase.captureOnCommitCallbacks(execute=True)`` or a transactional test
case (pytest-django's ``transaction=True``).
"""

from __future__ import annotations

import threading
from typing import Any

from django.db import connections

from .retirement import Retirement, apply

_EMPTY: frozenset[str] = frozenset()
_local = threading.local()


class PendingRetirement:
    """An on-commit callback that also says what it will retire (for dirty reads)."""

    __slots__ = ("retirement", "using", "cache", "sids", "done")

    def __init__(self, retirement: Retirement, using: str, cache: Any, sids: frozenset[str]) -> None:
        self.retirement = retirement
        self.using = using
        self.cache = cache
        self.sids = sids
        self.done = False

    def __call__(self) -> None:
        if not self.done:
            self.done = True
            apply(self.retirement, self.cache)

    def waiting(self) -> bool:
        """Still queued on its connection: neither committed nor rolled back."""
        if self.done:
            return False
        return any(entry[1] is self for entry in connections[self.using].run_on_commit)


def _pending() -> list[PendingRetirement]:
    pending = getattr(_local, "pending", None)
    if pending is None:
        pending = _local.pending = []
    return pending


def schedule(retirement: Retirement, using: str, cache: Any = None) -> None:
    """Retire after the current transaction on ``using`` commits (at once outside one)."""
    if not retirement:
        return
    connection = connections[using]
    if not connection.in_atomic_block:
        _still_waiting()
        if connection.connection is not None and not connection.autocommit:
            connection.on_commit(lambda: None)  # Django's own error for manual transactions
        apply(retirement, cache)
        return
    sids = frozenset(connection.savepoint_ids)
    pending = _pending()
    for queued in pending:
        # Callbacks registered under the same savepoints share one fate
        # (Django drops a callback when any of its savepoints rolls back),
        # so a transaction's many writes can share one callback.
        if queued.using == using and queued.sids == sids and queued.cache is cache and queued.waiting():
            queued.retirement |= retirement
            return
    queued = PendingRetirement(retirement, using, cache, sids)
    connection.on_commit(queued)
    pending.append(queued)


def _still_waiting() -> list[PendingRetirement]:
    """Forget finished callbacks (committed or rolled back); return those still waiting."""
    pending = getattr(_local, "pending", None)
    if not pending:
        return []
    waiting = [queued for queued in pending if queued.waiting()]
    _local.pending = waiting
    return waiting


def dirty_namespaces() -> frozenset[str]:
    """Namespaces this thread's open transactions wrote: reads of them bypass the cache."""
    if not getattr(_local, "pending", None):
        return _EMPTY
    names: set[str] = set()
    for queued in _still_waiting():
        names |= queued.retirement.namespaces
    return frozenset(names)
