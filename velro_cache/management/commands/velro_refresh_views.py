"""`manage.py velro_refresh_views [VIEW ...]`: refresh materialized views now, or list their staleness.

For cron: ``velro_refresh_views --stale`` refreshes only registered views
older than their period and skips any another process is refreshing, so it
can run every minute from several hosts.

Every mistake on the command line (an unknown view, model or database, a
model that reads no view, ``--stale`` on an unregistered view) is a
``CommandError`` naming what is known, before anything is refreshed.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from velro_cache.db.refresh import RefreshResult, refresh_stale_views, refresh_views
from velro_cache.db.refreshlog import last_refresh
from velro_cache.db.registry import all_views, registry

NO_VIEWS = (
    "No materialized views are known: none is registered (velro_cache.db.registry.register_view) "
    "and no installed model subclasses velro_cache.db.models.MaterializedView."
)


class Command(BaseCommand):
    help = "Refresh materialized views (all, or the named ones) and print duration and rows of each."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("views", nargs="*", metavar="VIEW", help="view names or model labels (app.Model); default all")
        parser.add_argument("--database", default=None, help="database alias (default: where each view's model is routed)")
        parser.add_argument("--plain", action="store_true", help="never refresh concurrently")
        parser.add_argument("--no-wait", action="store_true", help="skip views another process is refreshing")
        parser.add_argument("--stale", action="store_true", help="only registered views older than their refresh period")
        parser.add_argument("--list", action="store_true", help="list views with their last refresh; refresh nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        database = self._check_database(options["database"])
        known = all_views()
        named = [self._resolve(view, known) for view in options["views"]]
        names = named or known
        if not names:
            self.stdout.write(self.style.WARNING(NO_VIEWS))
            return
        if options["list"]:
            self._list(names, database)
            return
        started = time.perf_counter()
        if options["stale"]:
            stale_among = self._registered(named) if named else None  # None: every registered view
            results = refresh_stale_views(stale_among, using=database, trigger="command")
        else:
            results = refresh_views(
                names,
                using=database,
                concurrently=False if options["plain"] else None,
                wait=not options["no_wait"],
                trigger="command",
            )
        for result in results:
            self._print(result)
        self._summary(results, time.perf_counter() - started)

    @staticmethod
    def _check_database(database: str | None) -> str | None:
        if database is not None and database not in connections:
            raise CommandError(f"Unknown database {database!r}; configured: {', '.join(connections)}.")
        return database

    @staticmethod
    def _resolve(view: str, known: list[str]) -> str:
        """A view name, or the view a model label (``app.Model``) reads."""
        if "." not in view:
            if view not in known:
                raise CommandError(f"Unknown view {view!r}; known views: {', '.join(known) or 'none'}.")
            return view
        try:
            name = apps.get_model(view)._meta.db_table
        except (LookupError, ValueError) as exc:
            raise CommandError(f"Unknown model {view!r}: {exc}") from exc
        if name not in known:
            raise CommandError(f"{view} reads no materialized view: it neither subclasses MaterializedView nor is registered.")
        return name

    @staticmethod
    def _registered(names: list[str]) -> list[str]:
        """``--stale`` needs a view's period, which only a registration gives."""
        unregistered = [name for name in names if registry.get(name) is None]
        if unregistered:
            raise CommandError(
                f"--stale needs a refresh period, and {', '.join(unregistered)} declares none: "
                f"register it (register_view(..., period=...)) or refresh it without --stale."
            )
        return names

    def _print(self, result: RefreshResult) -> None:
        if result.error:
            self.stderr.write(self.style.ERROR(result.describe()))
        elif result.skipped:
            self.stdout.write(self.style.WARNING(result.describe()))
        else:
            self.stdout.write(result.describe())

    def _summary(self, results: list[RefreshResult], seconds: float) -> None:
        failed = [r.view for r in results if r.error]
        done = sum(1 for r in results if r.ok)
        skipped = sum(1 for r in results if r.skipped)
        line = f"Refreshed {done} view(s), skipped {skipped}, failed {len(failed)} in {seconds:.2f} s."
        if failed:
            raise CommandError(f"{line} Failed: {', '.join(failed)} (recorded in the refresh log).")
        self.stdout.write(self.style.SUCCESS(line))

    def _list(self, names: list[str], database: str | None) -> None:
        for name in names:
            spec = registry.get(name)
            period = f"period {spec.refresh_period:.0f} s" if spec else "not registered"
            last = last_refresh(name, using=database)
            if last is None:
                self.stdout.write(f"{name}: never refreshed ({period})")
                continue
            age = timedelta(seconds=round(last.age.total_seconds()))
            self.stdout.write(
                f"{name}: {last.rows} rows, refreshed {age} ago in {last.duration_ms:.1f} ms "
                f"({'concurrently' if last.concurrently else 'plainly'}, {period})"
            )
