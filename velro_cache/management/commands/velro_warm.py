"""`manage.py velro_warm`: run the declared warming plan now and say what it warmed, in what time.

    velro_warm                      # every step, by priority, with a progress bar (tqdm, if installed)
    velro_warm --step generations   # only the named step(s) (repeatable)
    velro_warm --budget 5           # seconds for the whole run instead of the plan's
    velro_warm --json               # the run as JSON (what velro_cache.warming.results() keeps)

It runs every step, L2 ones included, whatever a worker's lock says: asking
for a warm-up means wanting it. Exit status 0 even when steps failed (they are
listed as such): warming is best effort; --strict makes a failed step exit 1.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from velro_cache.management.aliases import command_cache
from velro_cache.warming import ALL, RunResult, StepResult, declared, warm


class Command(BaseCommand):
    help = "Warm the cache with the declared warming plan; prints what each step warmed and how long it took."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--plan", default="default", help="a declared plan's name (default: 'default')")
        parser.add_argument("--step", action="append", default=None, dest="steps", help="run only this step (repeatable)")
        parser.add_argument("--budget", type=float, default=None, help="seconds for the whole run (default: the plan's)")
        parser.add_argument("--cache", default=None, help="cache alias (default: VELRO_CACHE['CACHE_ALIAS'])")
        parser.add_argument("--json", action="store_true", help="print the run as JSON instead of a table")
        parser.add_argument("--strict", action="store_true", help="exit 1 when a step failed or ran out of budget")

    def handle(self, *args: Any, **options: Any) -> None:
        plan = declared(options["plan"])
        if plan is None:
            raise CommandError(f"No warming plan {options['plan']!r} is declared (velro_cache.warming.declare in an AppConfig.ready()).")
        try:
            steps = plan.ordered(options["steps"])
        except KeyError as exc:
            raise CommandError(exc.args[0]) from exc
        _, cache = command_cache(options["cache"])
        bar = None if options["json"] else _progress_bar(len(steps), self.stderr._out)
        try:
            run = warm(plan, mode=ALL, only=options["steps"], budget=options["budget"], cache=cache,
                       progress=None if bar is None else _advance(bar))
        finally:
            if bar is not None:
                bar.close()
        if options["json"]:
            self.stdout.write(json.dumps(run.as_dict(), indent=2))
        else:
            self._summary(run)
        if options["strict"] and run.errors:
            raise CommandError(f"{run.errors} warming step(s) did not complete")

    def _summary(self, run: RunResult) -> None:
        self.stdout.write(f"{'step':<24} {'tiers':<8} {'status':<15} {'entries':>8} {'seconds':>8}")
        for step in run.steps:
            line = f"{step.name:<24} {'+'.join(step.tiers):<8} {step.status:<15} {step.entries:>8} {step.seconds:>8.3f}"
            self.stdout.write(line + (f"  ({step.error})" if step.error else ""))
        self.stdout.write(f"warmed {run.entries} entries in {run.seconds:.2f} s; {run.errors} step(s) did not complete")


def _progress_bar(total: int, stream: Any) -> Any:
    """A tqdm bar over the steps when tqdm is installed (the bench extra), else None: no bar."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="warming", unit="step", file=stream)


def _advance(bar: Any) -> Any:
    def progress(step: StepResult) -> None:
        bar.set_postfix_str(f"{step.name}: {step.entries} ({step.status})")
        bar.update(1)

    return progress
