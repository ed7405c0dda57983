"""What warming did, per process: the numbers the dashboard and metrics show.

Each worker warms its own L1, so results are per process, like the cache's
own counters. ``results()`` returns plain data (JSON-ready): the last run
with each step's outcome, and totals per step over every run since start.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Any

# A step's outcome.
DONE = "done"  # ran to the end
FAILED = "failed"  # raised (a query error, a bug): logged, counted, the next step runs
BUDGET = "budget"  # stopped, or not started, because a time budget was spent
SKIPPED = "skipped"  # an L2 step another worker already ran (it holds the L2 lock)
L2_UNAVAILABLE = "l2_unavailable"  # an L2 step while Redis does not answer (or no L2 is configured)
ERROR_OUTCOMES = frozenset({FAILED, BUDGET, L2_UNAVAILABLE})


@dataclass
class StepResult:
    name: str
    priority: int
    tiers: list[str]
    status: str = DONE
    entries: int = 0
    seconds: float = 0.0
    error: str | None = None

    @property
    def errors(self) -> int:
        return 1 if self.status in ERROR_OUTCOMES else 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "errors": self.errors}


@dataclass
class RunResult:
    """One warm-up: which plan, in what mode, started when, each step's outcome."""

    plan: str
    mode: str  # "all" (velro_warm, warm()) or "worker" (a worker's start: L2 steps once for all)
    started_at: float
    seconds: float = 0.0
    steps: list[StepResult] = field(default_factory=list)

    @property
    def entries(self) -> int:
        return sum(step.entries for step in self.steps)

    @property
    def errors(self) -> int:
        return sum(step.errors for step in self.steps)

    def step(self, name: str) -> StepResult:
        return next(step for step in self.steps if step.name == name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan,
            "mode": self.mode,
            "started_at": self.started_at,
            "seconds": self.seconds,
            "entries": self.entries,
            "errors": self.errors,
            "steps": [step.as_dict() for step in self.steps],
        }


class _Record:
    """The last run and per-step totals of this process, behind one lock (runs may overlap)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._last: RunResult | None = None
            self._runs = 0
            self._totals: dict[str, dict[str, float]] = {}

    def add(self, run: RunResult) -> None:
        with self._lock:
            self._last = run
            self._runs += 1
            for step in run.steps:
                total = self._totals.setdefault(step.name, {"runs": 0, "entries": 0, "errors": 0, "seconds": 0.0})
                total["runs"] += 1
                total["entries"] += step.entries
                total["errors"] += step.errors
                total["seconds"] += step.seconds

    def snapshot(self) -> dict[str, Any]:
        from .runtime import predictor_results

        with self._lock:
            found = {
                "runs": self._runs,
                "last_run": self._last.as_dict() if self._last is not None else None,
                "totals": {name: dict(total) for name, total in self._totals.items()},
            }
        found["predictors"] = predictor_results()
        return found


record = _Record()


def results() -> dict[str, Any]:
    """This process's warming results: ``{"runs", "last_run": {..., "steps": [...]}, "totals": {step: {...}}}``.

    ``last_run["steps"]`` lists each step's ``name``, ``status`` (done, failed,
    budget, skipped, l2_unavailable), ``entries`` warmed, ``seconds`` and
    ``errors`` (1 when it failed, ran out of budget or found no L2).
    ``predictors`` scores runtime warming (``velro_cache.warming.runtime``).
    """
    return record.snapshot()


def reset_results() -> None:
    """Forget what was recorded, predictor scores included (for tests)."""
    from .runtime import scores

    record.reset()
    scores.reset()
