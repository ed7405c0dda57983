"""Warming plans: what an application asks to have in the cache before traffic arrives.

The library ships the mechanism (``velro_cache.warming.run``); the plan is the
application's, because only it knows which reads its first requests make.
A plan is data: named steps with a priority, the tiers they are meant for and
a time budget, so the runner can order them, skip what another worker already
did and stop what runs too long, without knowing what a step reads.

A step's ``warm`` callable does the reading, through the same read-through
helpers the views use (``velro_cache.reads.cached_read`` /
``cached_read_many`` or functions built on them), and *yields* how many
entries each batch warmed. Yielding between batches is what lets the runner
honour a budget: it cannot interrupt a query, but it can decline the next
batch. A step may also return an int (one batch) or None.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

L1, L2 = "l1", "l2"
TIERS = frozenset({L1, L2})


@dataclass(frozen=True)
class Step:
    """One thing to warm.

    ``priority``: lower runs first (ties keep declaration order).
    ``tiers``: ``{"l1"}`` - every worker process runs it (its own L1 needs the
    values; values another worker put in L2 are read from there);
    ``{"l2"}`` - one worker runs it for all (under a Redis lock);
    both - every worker runs it, and the first to load a key fills L2 for the
    others (the fill lease makes that one load per key).
    ``budget``: seconds this step may take (None: only the plan's budget applies).
    """

    name: str
    warm: Callable[[], Iterable[int] | int | None]
    priority: int = 100
    tiers: frozenset[str] = TIERS
    budget: float | None = None

    def __post_init__(self) -> None:
        tiers = frozenset(self.tiers)
        object.__setattr__(self, "tiers", tiers)
        if not tiers or not tiers <= TIERS:
            raise ValueError(f"warming step {self.name!r}: tiers must be a non-empty subset of {sorted(TIERS)}, got {sorted(tiers)}")
        if self.budget is not None and self.budget <= 0:
            raise ValueError(f"warming step {self.name!r}: budget must be positive seconds, got {self.budget!r}")

    @property
    def per_worker(self) -> bool:
        """Whether every worker runs it (it targets L1), rather than one worker for all."""
        return L1 in self.tiers


@dataclass(frozen=True)
class Plan:
    """Steps and the budget of the whole warm-up (seconds; None: unbounded)."""

    steps: tuple[Step, ...]
    budget: float | None = 30.0
    name: str = "default"
    l2_lock_seconds: float = 300.0  # how long one worker's L2 warm-up counts for all (a restart after it warms again)
    _order: tuple[Step, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        steps = tuple(self.steps)
        object.__setattr__(self, "steps", steps)
        names = [step.name for step in steps]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"warming plan {self.name!r}: step names must be unique, repeated: {duplicates}")
        if self.budget is not None and self.budget <= 0:
            raise ValueError(f"warming plan {self.name!r}: budget must be positive seconds, got {self.budget!r}")
        # sorted() is stable: equal priorities keep the order they were declared in.
        object.__setattr__(self, "_order", tuple(sorted(steps, key=lambda step: step.priority)))

    def ordered(self, only: Iterable[str] | None = None) -> tuple[Step, ...]:
        """The steps in priority order; ``only`` keeps the named ones (an unknown name is an error)."""
        if only is None:
            return self._order
        wanted = set(only)
        unknown = sorted(wanted - {step.name for step in self.steps})
        if unknown:
            raise KeyError(f"warming plan {self.name!r} has no step(s) {unknown}; it has {[s.name for s in self._order]}")
        return tuple(step for step in self._order if step.name in wanted)


_declared: dict[str, Plan] = {}


def declare(plan: Plan) -> Plan:
    """Make ``plan`` the one ``warm()`` and ``velro_warm`` use under its name (call it from ``AppConfig.ready``)."""
    _declared[plan.name] = plan
    return plan


def declared(name: str = "default") -> Plan | None:
    return _declared.get(name)


def undeclare(name: str = "default") -> None:
    """Forget a declared plan (for tests)."""
    _declared.pop(name, None)


def batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """``items`` in lists of ``size``: the unit a step warms between two budget checks."""
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
