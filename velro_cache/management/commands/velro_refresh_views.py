"""`manage.py velro_refresh_views [VIEW ...]`: refresh materialized views now, or list their staleness.

For cron: ``velro_refresh_views --stale`` refreshes only registered views
older than their period and skips any another process is refreshing, so it
can run every minute from several hosts.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError, CommandParser

from velro_cache.db.refresh import RefreshResult, refresh_stale_views, refresh_views
from velro_cache.db.refreshlog import last_refresh
from velro_cache.db.registry import all_views, registry


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
        names = [self._resolve(view) for view in options["views"]] or all_views()
        if options["list"]:
            self._list(names, options["database"])
            return
        started = time.perf_counter()
        if options["stale"]:
            results = [r for r in refresh_stale_views(using=options["database"], trigger="command") if r.view in names]
        else:
            results = refresh_views(
                names,
                using=options["database"],
                concurrently=False if options["plain"] else None,
                wait=not options["no_wait"],
                trigger="command",
            )
        for result in results:
            self._print(result)
        self._summary(results, time.perf_counter() - started)

    def _resolve(self, view: str) -> str:
        if "." in view:
            try:
                return apps.get_model(view)._meta.db_table
            except (LookupError, ValueError) as exc:
                raise CommandError(f"Unknown model {view!r}: {exc}") from exc
        known = all_views()
        if view not in known:
            raise CommandError(f"Unknown view {view!r}; known views: {', '.join(known) or 'none'}.")
        return view

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
            last = last_refresh(name, using=database or None)
            if last is None:
                self.stdout.write(f"{name}: never refreshed ({period})")
                continue
            age = timedelta(seconds=round(last.age.total_seconds()))
            self.stdout.write(
                f"{name}: {last.rows} rows, refreshed {age} ago in {last.duration_ms:.1f} ms "
                f"({'concurrently' if last.concurrently else 'plainly'}, {period})"
            )


