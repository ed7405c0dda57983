"""Refreshes off the request path: one background thread per process, and the periodic schedule.

The thread (a ``worker.Debouncer``) runs two kinds of job: the debounced
refresh of one view after writes (``writes`` queues them) and the schedule's
tick, which refreshes the registered views older than their period and
queues the next tick. With ``VELRO_CACHE["VIEW_REFRESH_SCHEDULE"]`` on, the
first request a web process serves starts the schedule; a management command
serves no request, so it never runs the schedule (cron runs
``velro_refresh_views --stale`` instead). The thread itself starts on the
first job, so a process that neither writes a source nor serves a request
never starts it.
"""

from __future__ import annotations

from typing import Any

from django.core.signals import request_started
from django.db import DEFAULT_DB_ALIAS, connections

from ..conf import settings as velro_settings
from ..exceptions import RefreshFailed
from .refresh import refresh_stale_views, refresh_view
from .registry import registry
from .worker import Debouncer

WRITE, SCHEDULE = "write", "schedule"  # the kinds of job; a job's key is (kind, database, view)
JobKey = tuple[str, str, str]


def _background_job(key: JobKey) -> None:
    """Run one job; a failure is already recorded, and the schedule always queues its next tick."""
    kind, database, view = key
    try:
        if kind == WRITE:
            refresh_view(view, using=database, trigger="write")
        else:
            refresh_stale_views(using=database, trigger="schedule")
    except RefreshFailed:
        pass  # recorded and logged by refresh_view
    finally:
        connections[database].close()  # this thread's connection; never hold one between jobs
        if kind == SCHEDULE:  # even after an error: the schedule must outlive a database outage
            debouncer.schedule(key, schedule_tick())


debouncer: Debouncer[JobKey] = Debouncer(_background_job, name="velro-view-refresh")


def refresh_in_background(view: str, database: str, delay: float) -> None:
    """Refresh ``view`` in the background thread in ``delay`` seconds; calls within that
    window join the same refresh (call it after commit: ``writes.refresh_after_commit``)."""
    debouncer.schedule((WRITE, database, view), delay)


def schedule_tick() -> float:
    """How often the scheduler looks for stale views: half the shortest period, at least 1 s."""
    periods = [spec.refresh_period for spec in registry] or [float(velro_settings.VIEW_REFRESH_PERIOD)]
    return max(1.0, min(periods) / 2)


def start_schedule(using: str = DEFAULT_DB_ALIAS) -> None:
    """Start refreshing stale views periodically in this process's background thread."""
    key = (SCHEDULE, using, "")
    if not debouncer.is_scheduled(key):
        debouncer.schedule(key, 0.0)


def _start_schedule_on_first_request(**kwargs: Any) -> None:
    if velro_settings.VIEW_REFRESH_SCHEDULE:
        start_schedule()


# Web processes only: a management command never starts the schedule thread.
request_started.connect(_start_schedule_on_first_request, dispatch_uid="velro_cache.views.schedule")


def wait_for_background_refreshes(timeout: float | None = None) -> bool:
    """Block until no write-triggered refresh is pending or running (tests, shutdown)."""
    return debouncer.wait_idle(timeout, ignore=lambda key: key[0] == SCHEDULE)


__all__ = ["debouncer", "refresh_in_background", "schedule_tick", "start_schedule", "wait_for_background_refreshes"]
