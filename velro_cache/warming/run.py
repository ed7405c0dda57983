"""Running a warming plan: steps in priority order, within budgets, never raising.

Warming is an optimization, so nothing in it may cost availability: a step
that raises is logged, counted and followed by the next one; a budget spent
stops the step at its next batch and the plan before its next step; Redis
not answering turns the L2-only steps into counted no-ops while the L1 steps
still run. ``warm()`` returns what happened (``RunResult``) and records it
for ``velro_cache.warming.results()``.

Staleness: steps fill through the read-through machinery (namespace tokens
read before the load, fill leases, the write log), not raw sets, so a value
loaded before an invalidation commits is stored under a retired token and is
never served. Warming adds no path around that guarantee.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from .. import switches
from ..invalidation.retirement import resolve_cache
from ..keys import build_key
from .plan import L1, Plan, Step, declared
from .results import BUDGET, DONE, FAILED, L2_UNAVAILABLE, SKIPPED, RunResult, StepResult, record
from .runtime import warming_reads

logger = logging.getLogger("velro_cache.warming")

ALL, WORKER = "all", "worker"
Progress = Callable[[StepResult], None]


class _BudgetSpent(Exception):
    """A step's budget ran out mid-step: control flow caught in this module, never raised to a caller."""


def lock_key(plan: Plan, round_id: str | None = None) -> str:
    """The key whose ``add`` (SET NX in Redis) elects the one worker that warms L2 for all.

    ``round_id`` names one warm-up round (a trigger's id): each round elects its own worker.
    """
    return build_key("warming", "l2lock", plan.name, *((round_id,) if round_id else ()))


def warm(
    plan: Plan | str | None = None,
    *,
    mode: str = ALL,
    only: Iterable[str] | None = None,
    budget: float | None = None,
    cache: Any = None,
    progress: Progress | None = None,
    round_id: str | None = None,
) -> RunResult:
    """Run a warming plan now and return what each step did (also kept for ``results()``).

    ``plan``: a ``Plan``, a declared plan's name, or None (the declared
    "default"). ``mode``: ``"all"`` runs every step; ``"worker"`` is a worker
    process's start: steps for L1 run, steps only for L2 run in the one
    worker that takes the plan's L2 lock. ``only``: step names to run.
    ``budget``: seconds for the whole run, instead of the plan's.
    ``progress``: called with each step's result as it finishes.
    ``round_id``: in worker mode, the warm-up round whose L2 lock to take
    (a trigger's id; default: the start-up round).
    """
    if mode not in (ALL, WORKER):
        raise ValueError(f"warm(mode=...) is {ALL!r} or {WORKER!r}, not {mode!r}")
    resolved = _resolve(plan)
    run = RunResult(plan=resolved.name, mode=mode, started_at=time.time())
    if not switches.on(switches.WARMING):
        return _switched_off(run, resolved, only)
    started = time.monotonic()
    total = resolved.budget if budget is None else budget
    deadline = None if total is None else started + total
    target = resolve_cache(cache)
    l2_role: str | None = None  # decided at the first L2-only step, so an all-L1 plan never touches Redis for it
    for step in resolved.ordered(only):
        result = StepResult(step.name, step.priority, sorted(step.tiers))
        if not step.per_worker:
            if l2_role is None:
                l2_role = _l2_role(target, resolved, mode, round_id)
            if l2_role == _DOWN:
                _give_up(result, L2_UNAVAILABLE, "the cache has no L2 that answers")
            elif l2_role == _OTHER:
                result.status = SKIPPED
                result.error = "another worker holds the L2 warming lock"
        if result.status == DONE:
            if deadline is not None and time.monotonic() >= deadline:
                _give_up(result, BUDGET, "the plan's budget was spent before this step")
            else:
                with warming_reads():
                    _run_step(step, result, deadline)
        run.steps.append(result)
        if progress is not None:
            progress(result)
    run.seconds = time.monotonic() - started
    record.add(run)
    logger.info(
        "warming %s (%s, pid %d): %d entries in %.2f s, %d error(s); %s",
        run.plan, mode, os.getpid(), run.entries, run.seconds, run.errors,
        " ".join(f"{step.name}={step.status}:{step.entries}" for step in run.steps),
    )
    return run


def _switched_off(run: RunResult, plan: Plan, only: Iterable[str] | None) -> RunResult:
    """The warming switch is off: every step is reported skipped, with the reason, and nothing runs."""
    for step in plan.ordered(only):
        run.steps.append(StepResult(step.name, step.priority, sorted(step.tiers), status=SKIPPED, error="the warming switch is off"))
    record.add(run)
    logger.info("warming %s (%s, pid %d): not run, the warming switch is off", run.plan, run.mode, os.getpid())
    return run


def _resolve(plan: Plan | str | None) -> Plan:
    if isinstance(plan, Plan):
        return plan
    found = declared(plan or "default")
    if found is None:
        raise LookupError(
            f"no warming plan {plan or 'default'!r} is declared: call velro_cache.warming.declare(Plan(...)) "
            "in your AppConfig.ready(), or pass a Plan"
        )
    return found


def _run_step(step: Step, result: StepResult, plan_deadline: float | None) -> None:
    """Run one step batch by batch until it ends, raises or spends its budget."""
    started = time.monotonic()
    deadlines = [d for d in (plan_deadline, None if step.budget is None else started + step.budget) if d is not None]
    deadline = min(deadlines) if deadlines else None
    try:
        outcome = step.warm()
        if isinstance(outcome, int):
            result.entries += outcome
        elif outcome is not None:
            iterator = iter(outcome)
            try:
                for count in iterator:
                    result.entries += int(count or 0)
                    if deadline is not None and time.monotonic() >= deadline:
                        raise _BudgetSpent
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
    except _BudgetSpent:
        _give_up(result, BUDGET, f"budget spent after {result.entries} entries")
    except Exception as exc:  # a warming step must never take the worker down
        result.status = FAILED
        result.error = f"{type(exc).__name__}: {exc}"
        logger.warning("warming step %r failed after %d entries", step.name, result.entries, exc_info=True)
    result.seconds = time.monotonic() - started


def _give_up(result: StepResult, status: str, why: str) -> None:
    result.status = status
    result.error = why
    logger.warning("warming step %r: %s", result.name, why)


_OWNER, _OTHER, _DOWN = "owner", "other", "down"


def _l2_role(cache: Any, plan: Plan, mode: str, round_id: str | None) -> str:
    """Whether this process warms L2 (``owner``), another one does (``other``), or L2 does not answer (``down``).

    L2 is asked first with an authoritative read, which raises when Redis
    does not answer (a plain ``add`` would report that as "held elsewhere").
    In ``"all"`` mode the caller asked for everything: no lock is taken.
    Worker mode takes the plan's lock with ``add`` (SET NX with a TTL).
    """
    fetch = getattr(cache, "fetch_authoritative", None)
    if not getattr(cache, "has_l2", False) or fetch is None:
        return _DOWN
    try:
        fetch([lock_key(plan, round_id)])
        if mode == ALL:
            return _OWNER
        holder = f"{socket.gethostname()}:{os.getpid()}"
        taken = cache.add(lock_key(plan, round_id), holder, timeout=plan.l2_lock_seconds)
    except Exception:  # L2Unavailable, or any backend's failure to answer: no L2 to warm
        logger.warning("warming: L2 does not answer", exc_info=True)
        return _DOWN
    if taken:
        return _OWNER
    trusted = getattr(cache, "l2_trusted", None)
    return _DOWN if trusted is not None and not trusted() else _OTHER


__all__ = ["ALL", "L1", "WORKER", "lock_key", "warm"]
