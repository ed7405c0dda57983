"""`manage.py velro_switch`: see and change the optimization switches at runtime, in every worker.

    velro_switch list                  # each switch: setting, runtime value, in force here, what off means
    velro_switch list --json
    velro_switch set compression off   # off, on, or a percentage of the users or keys (25, 25%)
    velro_switch clear compression     # the setting applies again

Runtime values live in Redis (``velro_cache.switches``); every worker applies
a change within a second. ``--cache`` picks the alias whose Redis holds them
(default ``VELRO_CACHE["CACHE_ALIAS"]``, the one the workers read).
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from velro_cache import switches


def _shown(share: float | None) -> str:
    if share is None:
        return "-"
    return "on" if share >= 100 else "off" if share <= 0 else f"{share:g} %"


class Command(BaseCommand):
    help = "List, set or clear the runtime switches of velro-cache's optimizations."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--cache", default=None, help="cache alias whose Redis holds the switches (default: CACHE_ALIAS)")
        commands = parser.add_subparsers(dest="command", required=True)
        listing = commands.add_parser("list", help="every switch and its values")
        listing.add_argument("--json", action="store_true")
        setting = commands.add_parser("set", help="set a switch's runtime value")
        setting.add_argument("name", choices=list(switches.REGISTRY))
        setting.add_argument("value", help="on, off or a percentage from 0 to 100")
        clearing = commands.add_parser("clear", help="drop a switch's runtime value")
        clearing.add_argument("name", choices=list(switches.REGISTRY))

    def handle(self, *args: Any, **options: Any) -> None:
        using = options["cache"]
        if options["command"] == "list":
            self._list(using, options["json"])
            return
        name = options["name"]
        try:
            if options["command"] == "set":
                share = switches.set(name, options["value"], using=using)
                self.stdout.write(f"{name}: {_shown(share)} at runtime; every worker applies it within a second.")
            else:
                switches.clear(name, using=using)
                self.stdout.write(f"{name}: runtime value cleared; its setting ({_shown(switches.get(name).setting)}) applies.")
        except ValueError as exc:
            raise CommandError(f"{name}: {exc}") from exc
        except Exception as exc:  # no L2 (L2Required), Redis down
            raise CommandError(f"{name}: could not write to Redis ({type(exc).__name__}: {exc})") from exc

    def _list(self, using: str | None, as_json: bool) -> None:
        answered = switches.refresh(using)
        states = switches.all()
        if as_json:
            self.stdout.write(json.dumps({"redis_answered": answered, "switches": [s.as_dict() for s in states]}, indent=2))
            return
        if not answered:
            self.stderr.write("Redis did not answer: runtime values as last read by this process (none, in a new one).")
        rows = [("switch", "setting", "runtime", "in force", "off means")]
        rows += [(s.name, _shown(s.setting), _shown(s.runtime), _shown(s.percent), s.off_means) for s in states]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            self.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4])
