"""The app's own tables.

``ViewRefresh`` is the refresh log of the materialized views (L3): a view's
staleness is "how long since the last successful refresh started", and the
only honest source for that across worker processes is a row written by
whoever refreshed. The dashboard reads it; nothing on a request path does.
"""

from __future__ import annotations

from datetime import timedelta

from django.db import models
from django.utils import timezone


class ViewRefreshQuerySet(models.QuerySet):
    def for_view(self, view: str, database: str = "default") -> ViewRefreshQuerySet:
        return self.filter(view=view, database=database)

    def succeeded(self) -> ViewRefreshQuerySet:
        return self.filter(error="")

    def last_success(self, view: str, database: str = "default") -> ViewRefresh | None:
        return self.for_view(view, database).succeeded().order_by("-started_at").first()


class ViewRefresh(models.Model):
    """One refresh of one materialized view: when, how long, how many rows, or why it failed."""

    class Trigger(models.TextChoices):
        MANUAL = "manual", "Manual (code)"
        COMMAND = "command", "Management command"
        WRITE = "write", "After a write (debounced)"
        SCHEDULE = "schedule", "Schedule"

    view = models.CharField(max_length=63)
    database = models.CharField(max_length=64, default="default")
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.MANUAL)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(default=timezone.now)
    duration_ms = models.FloatField(default=0.0)
    rows = models.BigIntegerField(null=True, blank=True)
    concurrently = models.BooleanField(default=False)
    note = models.CharField(
        max_length=255, blank=True, help_text="Why the refresh was not concurrent, or how it was emulated."
    )
    error = models.TextField(blank=True)

    objects = ViewRefreshQuerySet.as_manager()

    class Meta:
        ordering = ["-started_at"]
        get_latest_by = "started_at"
        indexes = [models.Index(fields=["view", "database", "-started_at"], name="velro_viewrefresh_recent")]

    def __str__(self) -> str:
        outcome = f"failed: {self.error[:60]}" if self.error else f"{self.rows} rows"
        return f"{self.view} at {self.started_at:%Y-%m-%d %H:%M:%S} ({outcome})"

    @property
    def succeeded(self) -> bool:
        return not self.error

    @property
    def age(self) -> timedelta:
        """Staleness bound of the data this refresh produced: it saw the sources as of its start."""
        return timezone.now() - self.started_at


from .dashboard.models import Dashboard  # noqa: E402  (the dashboard's permissions; no table)

__all__ = ["Dashboard", "ViewRefresh", "ViewRefreshQuerySet"]
