"""The refresh log: one ``ViewRefresh`` row per refresh, and the staleness read from it.

A view's staleness is "how long since its last successful refresh started",
and the only honest source for that across worker processes is a row written
by whoever refreshed, in the refresh's own transaction. The engine writes the
rows (``record``); the schedule, the command and the dashboard read them.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from django.db import DatabaseError, transaction
from django.utils import timezone

from ..conf import settings as velro_settings
from ..models import ViewRefresh
from .registry import ViewRef, database_for, view_name

if TYPE_CHECKING:
    from .refresh import RefreshResult

log = logging.getLogger(__name__)

PRUNE_BATCH = 100  # old rows deleted per refresh: bounded work on the refresh's transaction


def record(result: RefreshResult) -> None:
    """Write the log row of ``result`` and set its ``record_id``; a missing log table
    costs a warning, never the refresh."""
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
    """Keep the newest ``VIEW_REFRESH_LOG_KEEP`` rows of the view."""
    keep = velro_settings.VIEW_REFRESH_LOG_KEEP
    rows = ViewRefresh.objects.using(database).for_view(view, database).order_by("-started_at")
    old = list(rows.values_list("pk", flat=True)[keep : keep + PRUNE_BATCH])
    if old:
        ViewRefresh.objects.using(database).filter(pk__in=old).delete()


def last_refresh(view: ViewRef, using: str | None = None) -> ViewRefresh | None:
    """The latest successful ``ViewRefresh`` of the view, or None."""
    database = database_for(view, using)
    return ViewRefresh.objects.using(database).last_success(view_name(view), database)


def staleness(view: ViewRef, using: str | None = None) -> timedelta | None:
    """How old the view's data may be: time since its last successful refresh started."""
    last = last_refresh(view, using)
    return last.age if last is not None else None


__all__ = ["last_refresh", "record", "staleness"]
