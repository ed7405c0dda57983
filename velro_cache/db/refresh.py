"""The refresh engine: refresh a view now, in this thread, one refresh of a view at a time.

Never two refreshes of one view at once. Inside a process a lock per view
orders threads; across processes a PostgreSQL advisory lock (held for the
refresh's transaction) does, so a second caller either waits its turn or,
with ``wait=False``, skips and says so. PostgreSQL would serialize two
REFRESHes by itself, but only by queueing connections blindly; the advisory
lock lets a caller choose to skip and lets the schedule avoid duplicate work.

Every refresh leaves a row in the refresh log (``refreshlog``), written in
the refresh's transaction. When refreshes run (after writes, on a schedule)
is decided elsewhere (``writes``, ``schedule``); this module only runs them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import DatabaseError, connections, transaction
from django.utils import timezone

from ..exceptions import RefreshFailed, ViewNotFound
from . import refreshlog
from . import sql as view_sql
from .registry import ViewRef, all_views, database_for, registry, view_name

log = logging.getLogger(__name__)


@dataclass
class RefreshResult:
    """What one refresh did; ``note`` says why it was not concurrent, or why it was skipped."""

    view: str
    database: str
    trigger: str
    concurrently: bool = False
    note: str = ""
    rows: int | None = None
    started_at: datetime | None = None
    duration_ms: float = 0.0
    error: str = ""
    skipped: bool = False
    record_id: int | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return not self.error and not self.skipped

    def describe(self) -> str:
        if self.skipped:
            return f"{self.view}: skipped ({self.note})"
        if self.error:
            return f"{self.view}: FAILED after {self.duration_ms:.1f} ms: {self.error}"
        how = "concurrently" if self.concurrently else "plainly"
        mode = f"{how} ({self.note})" if self.note else how
        return f"{self.view}: {self.rows} rows in {self.duration_ms:.1f} ms, {mode}"


# -- locks ---------------------------------------------------------------------------------


class _ProcessLocks:
    """One lock per (database, view) in this process; recreated in a forked child,
    where a lock held by a parent's thread would never be released."""

    def __init__(self) -> None:
        self._reset()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}

    def get(self, database: str, view: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((database, view), threading.Lock())


_process_locks = _ProcessLocks()


def advisory_lock_key(view: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_xact_lock``: the same in every process."""
    digest = hashlib.sha256(f"velro_cache.refresh:{view}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _take_advisory_lock(connection: Any, view: str, wait: bool) -> bool:
    """Transaction-scoped, so it is released however the transaction ends."""
    if connection.vendor != view_sql.POSTGRESQL:
        return True  # SQLite: the process lock above, then SQLite's own write lock.
    function = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {function}(%s)", [advisory_lock_key(view)])
        acquired = cursor.fetchone()[0]
    return wait or bool(acquired)


# -- refreshing now -------------------------------------------------------------------------


def _plan(connection: Any, view: str, requested: bool | None) -> tuple[bool, str]:
    """Whether to refresh concurrently, and if not, the reason the result will carry."""
    if not view_sql.view_exists(connection, view):
        raise ViewNotFound(f"materialized view {view!r} does not exist in database {connection.alias!r}")
    if requested is False:
        return False, "plain refresh requested"
    if not view_sql.has_unique_index(connection, view):
        return False, (
            "no unique index on plain columns without WHERE, which REFRESH ... CONCURRENTLY "
            "requires (on PostgreSQL readers wait until a plain refresh ends)"
        )
    if not view_sql.is_populated(connection, view):
        return False, "never populated (created WITH NO DATA): the first refresh cannot be concurrent"
    if connection.vendor == view_sql.SQLITE:
        return True, "SQLite emulation: rows replaced in one transaction, readers keep the old rows until it commits"
    return True, ""


def _run(connection: Any, result: RefreshResult, concurrently: bool | None) -> None:
    result.started_at = timezone.now()
    started = time.perf_counter()
    try:
        # A savepoint: a failed refresh must leave the lock's transaction usable for the record.
        with transaction.atomic(using=connection.alias):
            result.concurrently, note = _plan(connection, result.view, concurrently)
            result.note = "" if result.concurrently and connection.vendor == view_sql.POSTGRESQL else note
            statements = view_sql.refresh_statements(connection.vendor, connection.ops.quote_name, result.view, result.concurrently)
            with connection.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)
            result.rows = view_sql.row_count(connection, result.view)
    except DatabaseError as exc:
        result.error = f"{type(exc).__name__}: {exc}".strip()
    result.duration_ms = (time.perf_counter() - started) * 1000


def _is_fresh(database: str, view: str, max_age: timedelta) -> timedelta | None:
    """The age of the view's last successful refresh if it is younger than ``max_age``."""
    last = refreshlog.last_refresh(view, using=database)
    if last is not None and last.age < max_age:
        return last.age
    return None


def refresh_view(
    view: ViewRef,
    *,
    using: str | None = None,
    concurrently: bool | None = None,
    wait: bool = True,
    trigger: str = "manual",
    if_older_than: timedelta | None = None,
) -> RefreshResult:
    """Refresh one view now, in this thread, and record it.

    ``concurrently=None`` refreshes concurrently whenever the view allows it;
    when it does not (or ``False`` was asked), the result's ``note`` says why.
    ``wait=False`` skips instead of queueing behind a refresh that is running.
    ``if_older_than`` skips when another worker refreshed the view more
    recently than that (checked after taking the lock, so two schedulers never
    both refresh). Raises ``RefreshFailed`` after recording a failure.
    """
    name = view_name(view)
    result = RefreshResult(view=name, database=database_for(view, using), trigger=trigger)
    lock = _process_locks.get(result.database, name)
    if not lock.acquire(blocking=wait):
        return _skipped(result, "another refresh of this view is running in this process")
    try:
        return _refresh_locked(result, concurrently, wait, if_older_than)
    finally:
        lock.release()


@contextmanager
def _write_transaction(connection: Any) -> Iterator[None]:
    """A transaction that is a writer from its first statement.

    PostgreSQL needs nothing special. SQLite does: a transaction that reads
    first (our introspection) and writes later fails at once with "database
    is locked" when another connection writes meanwhile, because waiting
    could deadlock; one begun IMMEDIATE waits (up to the busy timeout) for
    the write lock instead, which makes another process's refresh or write
    queue this one rather than fail it.
    """
    immediate = connection.vendor == view_sql.SQLITE and not connection.in_atomic_block
    if immediate:
        connection.ensure_connection()  # connecting resets transaction_mode from the settings
        configured = connection.transaction_mode
        connection.transaction_mode = "IMMEDIATE"
    try:
        with transaction.atomic(using=connection.alias):
            if immediate:
                connection.transaction_mode = configured
            yield
    finally:
        if immediate:
            connection.transaction_mode = configured


def _refresh_locked(
    result: RefreshResult, concurrently: bool | None, wait: bool, if_older_than: timedelta | None
) -> RefreshResult:
    connection = connections[result.database]
    with _write_transaction(connection):
        if not _take_advisory_lock(connection, result.view, wait):
            return _skipped(result, "another process is refreshing this view")
        if if_older_than is not None:
            age = _is_fresh(result.database, result.view, if_older_than)
            if age is not None:
                return _skipped(result, f"refreshed {age.total_seconds():.0f} s ago")
        _run(connection, result, concurrently)
        refreshlog.record(result)
    if result.error:
        log.error("refresh of %s failed: %s", result.view, result.error)
        raise RefreshFailed(result)
    log.info("refreshed %s", result.describe())
    return result


def _skipped(result: RefreshResult, why: str) -> RefreshResult:
    result.skipped, result.note = True, why
    return result


def refresh_views(
    views: Iterable[ViewRef] | None = None, *, using: str | None = None, **options: Any
) -> list[RefreshResult]:
    """Refresh several views (default: all known), one after another; a failure
    is recorded in its result and does not stop the others."""
    results = []
    for view in views if views is not None else all_views():
        try:
            results.append(refresh_view(view, using=using, **options))
        except RefreshFailed as failed:
            results.append(failed.result)
    return results


def refresh_stale_views(
    views: Iterable[ViewRef] | None = None, *, using: str | None = None, trigger: str = "schedule"
) -> list[RefreshResult]:
    """Refresh every registered view (or those of ``views`` that are registered) whose
    last successful refresh is older than its period.

    Safe to run from every worker process and from cron at once: each view is
    skipped when another process holds its lock or refreshed it meanwhile.
    """
    wanted = None if views is None else {view_name(view) for view in views}
    results = []
    for spec in registry:
        if wanted is not None and spec.name not in wanted:
            continue
        period = timedelta(seconds=spec.refresh_period)
        try:
            results.append(refresh_view(spec.name, using=using, wait=False, trigger=trigger, if_older_than=period))
        except RefreshFailed as failed:
            results.append(failed.result)
    return results


__all__ = ["RefreshResult", "advisory_lock_key", "refresh_stale_views", "refresh_view", "refresh_views"]
