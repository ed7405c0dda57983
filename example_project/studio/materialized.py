"""Which writes refresh which Velro view, and the cached reads warming uses.

Declared once, here: saving or deleting a source row schedules a debounced
refresh of the views built from it, after the transaction commits. The periods
are how stale each view may get when nothing triggers it (and the TTL of its
cached reads): recent generations move fastest, memberships slowest.

Bulk writes send no signals: code that bulk-writes sources calls
``velro_cache.db.refresh.refresh_views`` once afterwards (the seed command
does) or ``velro_cache.db.writes.refresh_after_commit``.

Each read also passes ``live=``: the same answer from the live tables, which
``read_view`` returns instead (uncached) while the ``view_reads`` switch is
off for its key (docs/switches.md), so turning the switch off really takes the
views out of the read path. The live query is the view's own SELECT, the one
spelling of it in the migration, run as a subquery.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connections, router

from velro_cache.db.reads import read_view
from velro_cache.db.registry import register_view
from velro_cache.db.sql import select_for

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


# Each view's SELECT, as its migration creates it (one spelling of the SQL).
_MIGRATION = importlib.import_module("studio.migrations.0002_materialized_views")
_VIEW_SQL = {
    ActiveUser: _MIGRATION.ACTIVE_USERS_SQL,
    RecentGeneration: _MIGRATION.RECENT_GENERATIONS_SQL,
    ActiveMembership: _MIGRATION.ACTIVE_MEMBERSHIPS_SQL,
    GenerationAccessCount: _MIGRATION.ACCESS_COUNTS_SQL,
}


def live_rows(view: type, columns: Sequence[str], order_by: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The rows ``view`` would hold were it refreshed now: its SELECT run on the live tables, ordered and cut like the view read."""
    connection = connections[router.db_for_read(view)]
    select = select_for(_VIEW_SQL[view], connection.vendor)
    query = f"SELECT {', '.join(columns)} FROM ({select}) live ORDER BY {order_by}"
    if limit is not None:
        query += f" LIMIT {int(limit)}"
    with connection.cursor() as cursor:
        cursor.execute(query)  # no parameters: the SQLite spelling's strftime '%' stay as they are
        return [dict(zip(columns, row)) for row in cursor.fetchall()]


def top_active_users(limit: int = 100) -> list[dict[str, Any]]:
    """The most active users of the last 24 h (warming's first priority)."""

    def load() -> list[dict[str, Any]]:
        rows = ActiveUser.objects.order_by("-activity", "user_id")[:limit]
        return [
            {"user_id": row.user_id, "username": row.username, "activity": row.activity,
             "requests_24h": row.requests_24h, "generations_24h": row.generations_24h}
            for row in rows
        ]

    def live() -> list[dict[str, Any]]:
        columns = ("user_id", "username", "activity", "requests_24h", "generations_24h")
        return live_rows(ActiveUser, columns, "activity DESC, user_id", limit)

    return read_view(ActiveUser, ("top", limit), load, live=live)


def recent_generation_ids(limit: int = 500) -> list[int]:
    """The ids of the most recent generations of the last 48 h."""

    def load() -> list[int]:
        rows = RecentGeneration.objects.order_by("-created_at", "-id").values_list("id", flat=True)
        return list(rows[:limit])

    def live() -> list[int]:
        return [row["id"] for row in live_rows(RecentGeneration, ("id",), "created_at DESC, id DESC", limit)]

    return read_view(RecentGeneration, ("ids", limit), load, live=live)


def active_memberships() -> list[dict[str, Any]]:
    """Every active user's memberships, shaped like ``reads.team_memberships`` rows."""

    def load() -> list[dict[str, Any]]:
        rows = ActiveMembership.objects.order_by("user_id", "team_name").values(
            "user_id", "team_id", "team_name", "team_slug", "role"
        )
        return list(rows)

    def live() -> list[dict[str, Any]]:
        return live_rows(ActiveMembership, ("user_id", "team_id", "team_name", "team_slug", "role"), "user_id, team_name")

    return read_view(ActiveMembership, "all", load, live=live)


def most_accessed_generations(limit: int = 100) -> list[dict[str, Any]]:
    def load() -> list[dict[str, Any]]:
        rows = GenerationAccessCount.objects.order_by("-access_count", "generation_id")[:limit]
        return list(rows.values("generation_id", "access_count", "accesses_24h", "unique_users"))

    def live() -> list[dict[str, Any]]:
        columns = ("generation_id", "access_count", "accesses_24h", "unique_users")
        return live_rows(GenerationAccessCount, columns, "access_count DESC, generation_id", limit)

    return read_view(GenerationAccessCount, ("top", limit), load, live=live)
