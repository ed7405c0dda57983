"""Refreshing materialized views: now, after relevant writes (debounced), and on a schedule.

Three rules shape everything here:

- Never two refreshes of one view at once. Inside a process a lock per view
  orders threads; across processes a PostgreSQL advisory lock (held for the
  refresh's transaction) does, so a second caller either waits its turn or,
  with ``wait=False``, skips and says so. PostgreSQL would serialize two
  REFRESHes by itself, but only by queueing connections blindly; the advisory
  lock lets a caller choose to skip and lets the schedule avoid duplicate work.
- A write never pays for a refresh. A write to a declared source schedules
  one with ``transaction.on_commit`` (a rolled-back transaction schedules
  nothing) into a background thread that runs one refresh per burst
  (``velro_cache.db.worker.Debouncer``).
- Every refresh leaves a ``ViewRefresh`` row (when, how long, rows, whether
  concurrent and why not, the error), written in the refresh's transaction, so
  a view's staleness is known to every process and to the dashboard.
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
from functools import partial
from typing import Any

from django.apps import apps
from django.core.signals import request_started
from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    connections,
    models,
    router,
    transaction,
)
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.utils import timezone

from ..conf import settings as velro_settings
from . import sql as view_sql
from .worker import Debouncer
from ..exceptions import RefreshFailed, ViewNotFound  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

ViewRef = str | type[models.Model]


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


# -- naming ------------------------------------------------------------------------------


def view_name(view: ViewRef) -> str:
    return view if isinstance(view, str) else view._meta.db_table


def _database_for(view: ViewRef, using: str | None) -> str:
    if using:
        return using
    model = view if not isinstance(view, str) else registry.model_of(view)
    return router.db_for_write(model) if model is not None else DEFAULT_DB_ALIAS


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
    last = last_refresh(view, using=database)
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
    result = RefreshResult(view=name, database=_database_for(view, using), trigger=trigger)
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
        _record(result)
    if result.error:
        log.error("refresh of %s failed: %s", result.view, result.error)
        raise RefreshFailed(result)
    log.info("refreshed %s", result.describe())
    return result


def _skipped(result: RefreshResult, why: str) -> RefreshResult:
    result.skipped, result.note = True, why
    return result


def _record(result: RefreshResult) -> None:
    """Write the log row; a missing log table costs a warning, never the refresh."""
    from ..models import ViewRefresh

    try:
        with transaction.atomic(using=result.database):
            row = ViewRefresh.objects.using(result.database).create(
                view=result.view,
                database=result.database,
                trigger=result.trigger,
                started_at=result.started_at,
                finished_at=timezone.now(),
                duration_ms=result.duration_ms,
                rows=result.rows,
                concurrently=result.concurrently,
                note=result.note[:255],
                error=result.error,
            )
            _prune(result.database, result.view)
        result.record_id = row.pk
    except DatabaseError as exc:
        log.warning(
            "could not record the refresh of %s in %r (are velro_cache's migrations applied there?): %s",
            result.view, result.database, exc,
        )


def _prune(database: str, view: str) -> None:
    from ..models import ViewRefresh

    keep = velro_settings.VIEW_REFRESH_LOG_KEEP
    rows = ViewRefresh.objects.using(database).for_view(view, database).order_by("-started_at")
    old = list(rows.values_list("pk", flat=True)[keep : keep + 100])
    if old:
        ViewRefresh.objects.using(database).filter(pk__in=old).delete()


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


# -- staleness ----------------------------------------------------------------------------------


def last_refresh(view: ViewRef, using: str | None = None) -> Any:
    """The latest successful ``ViewRefresh`` of the view, or None."""
    from ..models import ViewRefresh

    database = _database_for(view, using)
    return ViewRefresh.objects.using(database).last_success(view_name(view), database)


def staleness(view: ViewRef, using: str | None = None) -> timedelta | None:
    """How old the view's data may be: time since its last successful refresh started."""
    last = last_refresh(view, using)
    return last.age if last is not None else None


# -- declaring which writes refresh which view ---------------------------------------------------


@dataclass(frozen=True)
class ViewSpec:
    name: str
    model: type[models.Model] | None
    sources: tuple[type[models.Model], ...]
    period: float | None
    debounce: float | None

    @property
    def refresh_period(self) -> float:
        return float(self.period if self.period is not None else velro_settings.VIEW_REFRESH_PERIOD)

    @property
    def refresh_debounce(self) -> float:
        return float(self.debounce if self.debounce is not None else velro_settings.VIEW_REFRESH_DEBOUNCE)


class ViewRegistry:
    """Which views exist, how often they refresh, and which models' writes refresh them."""

    def __init__(self) -> None:
        self._specs: dict[str, ViewSpec] = {}

    def register(
        self,
        view: ViewRef,
        *,
        refresh_on: Iterable[type[models.Model] | str] = (),
        period: float | None = None,
        debounce: float | None = None,
    ) -> ViewSpec:
        """Declare a view; saves, deletes and m2m changes of ``refresh_on`` models
        refresh it after commit, debounced. Registering again replaces the declaration."""
        name = view_name(view)
        sources = tuple(apps.get_model(source) if isinstance(source, str) else source for source in refresh_on)
        spec = ViewSpec(name, None if isinstance(view, str) else view, sources, period, debounce)
        self.unregister(name)
        self._specs[name] = spec
        for source in sources:
            self._connect(spec, source)
        return spec

    def unregister(self, view: ViewRef) -> None:
        spec = self._specs.pop(view_name(view), None)
        if spec is None:
            return
        for source in spec.sources:
            for signal, uid in self._signals(spec, source):
                signal.disconnect(sender=source, dispatch_uid=uid)

    def get(self, view: ViewRef) -> ViewSpec | None:
        return self._specs.get(view_name(view))

    def model_of(self, view: str) -> type[models.Model] | None:
        spec = self._specs.get(view)
        return spec.model if spec is not None else None

    def __iter__(self) -> Any:
        return iter(list(self._specs.values()))

    @staticmethod
    def _signals(spec: ViewSpec, source: type[models.Model]) -> list[tuple[Any, str]]:
        label = source._meta.label_lower
        return [(signal, f"velro_cache.views:{spec.name}:{label}:{kind}") for signal, kind in (
            (post_save, "save"), (post_delete, "delete"), (m2m_changed, "m2m"))]

    def _connect(self, spec: ViewSpec, source: type[models.Model]) -> None:
        handler = partial(_source_written, spec.name)
        for signal, uid in self._signals(spec, source):
            signal.connect(handler, sender=source, weak=False, dispatch_uid=uid)


registry = ViewRegistry()
register_view = registry.register


def all_views() -> list[str]:
    """Registered views plus every concrete MaterializedView model, sorted by name."""
    from .models import MaterializedView

    names = {spec.name for spec in registry}
    names.update(
        model._meta.db_table
        for model in apps.get_models()
        if issubclass(model, MaterializedView) and not model._meta.abstract
    )
    return sorted(names)


_M2M_WRITES = {"post_add", "post_remove", "post_clear"}


def _source_written(view: str, sender: Any, using: str | None = None, action: str | None = None, **kwargs: Any) -> None:
    if action is not None and action not in _M2M_WRITES:
        return
    refresh_after_commit(view, using=using)


def refresh_after_commit(view: ViewRef, using: str | None = None) -> None:
    """Schedule a debounced background refresh when the current transaction commits.

    For writes that send no signals (``QuerySet.update``, ``bulk_create``, raw
    SQL): call this next to them. Outside a transaction it schedules at once;
    after a rollback it schedules nothing.
    """
    if not velro_settings.VIEW_REFRESH_ON_WRITE:
        return
    name = view_name(view)
    database = _database_for(view, using)
    spec = registry.get(name)
    delay = spec.refresh_debounce if spec is not None else float(velro_settings.VIEW_REFRESH_DEBOUNCE)
    transaction.on_commit(partial(debouncer.schedule, ("write", database, name), delay), using=database)


def views_fed_by(model: type[models.Model]) -> list[ViewSpec]:
    """The registered views that declare ``model`` (or the concrete model behind a proxy) a source."""
    concrete = model._meta.concrete_model
    return [spec for spec in registry if any(source._meta.concrete_model is concrete for source in spec.sources)]


def refresh_after_write(model: type[models.Model], using: str | None = None) -> None:
    """Schedule refreshes of every view fed by ``model``: the hook for bulk writes
    (``QuerySet.update``, ``bulk_create``), which send no signals."""
    for spec in views_fed_by(model):
        refresh_after_commit(spec.name, using=using)


# -- the background worker: debounced write refreshes and the schedule ------------------------------


def _background_job(key: tuple[str, str, str]) -> None:
    kind, database, view = key
    try:
        if kind == "write":
            refresh_view(view, using=database, trigger="write")
        else:
            refresh_stale_views(using=database, trigger="schedule")
    except RefreshFailed:
        pass  # recorded and logged by refresh_view
    finally:
        connections[database].close()  # this thread's connection; never hold one between jobs
        if kind == "schedule":  # even after an error: the schedule must outlive a database outage
            debouncer.schedule(key, schedule_tick())


debouncer = Debouncer(_background_job, name="velro-view-refresh")


def refresh_stale_views(using: str | None = None, trigger: str = "schedule") -> list[RefreshResult]:
    """Refresh every registered view whose last successful refresh is older than its period.

    Safe to run from every worker process and from cron at once: each view is
    skipped when another process holds its lock or refreshed it meanwhile.
    """
    results = []
    for spec in registry:
        period = timedelta(seconds=spec.refresh_period)
        try:
            results.append(refresh_view(spec.name, using=using, wait=False, trigger=trigger, if_older_than=period))
        except RefreshFailed as failed:
            results.append(failed.result)
    return results


def schedule_tick() -> float:
    """How often the scheduler looks for stale views: half the shortest period, at least 1 s."""
    periods = [spec.refresh_period for spec in registry] or [float(velro_settings.VIEW_REFRESH_PERIOD)]
    return max(1.0, min(periods) / 2)


def start_schedule(using: str = DEFAULT_DB_ALIAS) -> None:
    """Start refreshing stale views periodically in this process's background thread."""
    key = ("schedule", using, "")
    if not debouncer.is_scheduled(key):
        debouncer.schedule(key, 0.0)


def _start_schedule_on_first_request(**kwargs: Any) -> None:
    if velro_settings.VIEW_REFRESH_SCHEDULE:
        start_schedule()


# Web processes only: a management command never starts the schedule thread.
request_started.connect(_start_schedule_on_first_request, dispatch_uid="velro_cache.views.schedule")


def wait_for_background_refreshes(timeout: float | None = None) -> bool:
    """Block until no write-triggered refresh is pending or running (tests, shutdown)."""
    return debouncer.wait_idle(timeout, ignore=lambda key: key[0] == "schedule")


__all__ = [
    "RefreshFailed",
    "RefreshResult",
    "ViewNotFound",
    "ViewRegistry",
    "ViewSpec",
    "all_views",
    "last_refresh",
    "refresh_after_commit",
    "refresh_after_write",
    "refresh_stale_views",
    "refresh_view",
    "refresh_views",
    "register_view",
    "registry",
    "staleness",
    "start_schedule",
    "views_fed_by",
    "wait_for_background_refreshes",
]
