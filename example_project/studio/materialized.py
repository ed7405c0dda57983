"""Which writes refresh which Velro view, and the cached reads warming uses.

Declared once, here: saving or deleting a source row schedules a debounced
refresh of the views built from it, after the transaction commits. The periods
are how stale each view may get when nothing triggers it (and the TTL of its
cached reads): recent generations move fastest, memberships slowest.

Bulk writes send no signals: code that bulk-writes sources calls
``velro_cache.db.refresh.refresh_views`` once afterwards (the seed command
does) or ``velro_cache.db.writes.refresh_after_commit``.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model

from velro_cache.db.reads import read_view
from velro_cache.db.registry import register_view

from .models import (
    ActiveMembership,
    ActiveUser,
    ApiToken,
    Generation,
    GenerationAccess,
    GenerationAccessCount,
    RecentGeneration,
    Team,
    TeamMembership,
)

User = get_user_model()

register_view(ActiveUser, refresh_on=[Generation, GenerationAccess, ApiToken, User], period=300)
# Generations and access logs are written all the time, and these two views are
# the big ones (at 400k generations a concurrent refresh of the 48 h window takes
# a second or more, see benchmarks/results/views.md): a 10 s debounce caps them at one
# refresh per 10 s, however busy the API is.
register_view(RecentGeneration, refresh_on=[Generation], period=60, debounce=10.0)
register_view(ActiveMembership, refresh_on=[TeamMembership, Team, User], period=600)
register_view(GenerationAccessCount, refresh_on=[GenerationAccess], period=60, debounce=10.0)


def top_active_users(limit: int = 100) -> list[dict[str, Any]]:
    """The most active users of the last 24 h (warming's first priority)."""

    def load() -> list[dict[str, Any]]:
        rows = ActiveUser.objects.order_by("-activity", "user_id")[:limit]
        return [
            {"user_id": row.user_id, "username": row.username, "activity": row.activity,
             "requests_24h": row.requests_24h, "generations_24h": row.generations_24h}
            for row in rows
        ]

    return read_view(ActiveUser, ("top", limit), load)


def recent_generation_ids(limit: int = 500) -> list[int]:
    """The ids of the most recent generations of the last 48 h."""

    def load() -> list[int]:
        rows = RecentGeneration.objects.order_by("-created_at", "-id").values_list("id", flat=True)
        return list(rows[:limit])

    return read_view(RecentGeneration, ("ids", limit), load)


def active_memberships() -> list[dict[str, Any]]:
    """Every active user's memberships, shaped like ``reads.team_memberships`` rows."""

    def load() -> list[dict[str, Any]]:
        rows = ActiveMembership.objects.order_by("user_id", "team_name").values(
            "user_id", "team_id", "team_name", "team_slug", "role"
        )
        return list(rows)

    return read_view(ActiveMembership, "all", load)


def most_accessed_generations(limit: int = 100) -> list[dict[str, Any]]:
    def load() -> list[dict[str, Any]]:
        rows = GenerationAccessCount.objects.order_by("-access_count", "generation_id")[:limit]
        return list(rows.values("generation_id", "access_count", "accesses_24h", "unique_users"))

    return read_view(GenerationAccessCount, ("top", limit), load)
