"""`manage.py velro_invalidate`: retire cached data by model, instance, prefix, tag, key or data type.

For the times the database changed behind the app's back (a migration's
RunSQL, a restore, a manual fix in psql): every retirement is O(1) per
namespace, never a scan of the keys.

    velro_invalidate --model studio.Generation --pk 5 --pk 6   # what those rows feed
    velro_invalidate --model studio.Generation                 # everything the model feeds
    velro_invalidate --prefix auth:user:123                    # a declared prefix (or tag)
    velro_invalidate --data-type generation                    # every key of a data type
    velro_invalidate --key system_config:banner                # a plain key, deleted too
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core.cache import BaseCache
from django.core.cache.backends.locmem import LocMemCache
from django.core.management.base import BaseCommand, CommandError, CommandParser

from velro_cache.backends import TieredCache
from velro_cache.invalidation import Retirement, invalidate, registry
from velro_cache.management.aliases import command_cache
from velro_cache.namespaces import levels


class Command(BaseCommand):
    help = "Invalidate cached data by model, instance, key prefix, tag, key or data type; prints what it retired."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--model", help="app_label.ModelName with cache declarations")
        parser.add_argument("--pk", action="append", default=[], help="with --model: one instance (repeatable)")
        parser.add_argument("--prefix", action="append", default=[], help="a key prefix / namespace, e.g. auth:user:123")
        parser.add_argument("--tag", action="append", default=[], help="a tag namespace, e.g. team:3")
        parser.add_argument("--key", action="append", default=[], help="an exact key (also deleted as a plain key)")
        parser.add_argument("--data-type", action="append", default=[], dest="data_types", help="e.g. generation")
        parser.add_argument("--cache", default=None, help="cache alias (default: VELRO_CACHE['CACHE_ALIAS'])")

    def handle(self, *args: Any, **options: Any) -> None:
        targets = self._targets(options)
        if not (targets or options["prefix"] or options["tag"] or options["key"] or options["data_types"]):
            raise CommandError("Say what to invalidate: --model [--pk], --prefix, --tag, --key or --data-type.")
        alias, cache = command_cache(options["cache"])
        try:
            retired = invalidate(
                *targets,
                prefixes=options["prefix"],
                tags=options["tag"],
                keys=options["key"],
                data_types=options["data_types"],
                cache=cache,
            )
        except (TypeError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        self._report(retired, options["prefix"])
        if _process_local(cache):
            self.stderr.write(
                self.style.WARNING(
                    f"Warning: cache {alias!r} has no L2 (no LOCATION), so only this command's own process was "
                    "affected: other processes' L1 are not reached without L2 and keep serving their copies "
                    "until they expire."
                )
            )

    def _targets(self, options: dict[str, Any]) -> list[Any]:
        label = options["model"]
        if label is None:
            if options["pk"]:
                raise CommandError("--pk needs --model.")
            return []
        try:
            model = apps.get_model(label)
        except (LookupError, ValueError) as exc:
            raise CommandError(f"Unknown model {label!r}: {exc}") from exc
        if not registry.declarations_for(model):
            raise CommandError(f"{model._meta.label} has no cache declarations (velro_cache.register).")
        if not options["pk"]:
            return [model]
        found = list(model._base_manager.filter(pk__in=options["pk"]))
        missing = {str(pk) for pk in options["pk"]} - {str(obj.pk) for obj in found}
        if missing:
            raise CommandError(f"No {model._meta.label} with pk {', '.join(sorted(missing))}.")
        return found

    def _report(self, retired: Retirement, prefixes: list[str]) -> None:
        names = sorted(retired.namespaces)
        self.stdout.write(f"Retired {len(names)} namespace{'s' if len(names) != 1 else ''}:")
        for name in names:
            self.stdout.write(f"  {name}")
        if retired.keys:
            self.stdout.write(f"Deleted {len(retired.keys)} plain key{'s' if len(retired.keys) != 1 else ''}:")
            for key in sorted(retired.keys):
                self.stdout.write(f"  {key}")
        for prefix in prefixes:
            if not levels.is_level(prefix):
                self.stderr.write(
                    f"Note: {prefix!r} is not a declared prefix level, so only reads that name it as a tag "
                    "carry its token. Declared levels: "
                    + ", ".join(sorted(str(p) for p in levels.patterns()))
                )


def _process_local(cache: BaseCache) -> bool:
    """Whether the cache's data lives in this process only, so retiring it here reaches no other process."""
    if isinstance(cache, TieredCache):
        return not cache.options.redis_urls
    return isinstance(cache, LocMemCache)
