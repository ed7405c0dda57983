"""The dashboard's actions: validated first, so bad input answers with a message and changes nothing.

Each action names a target the deployment must already know: a namespace that
is a declared key level (or a known first key part), a data type with a TTL or
a key mapping, a materialized view that exists. Only then does it run, through
the same public API code would use (``invalidate``, ``refresh_view``,
``warming.warm`` and ``warming.trigger``, ``switches.set`` and ``switches.clear``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.core.cache import caches

from ..conf import settings
from ..exceptions import RefreshFailed
from ..keys import parse_key


@dataclass(frozen=True)
class Outcome:
    ok: bool
    message: str


@dataclass(frozen=True)
class Action:
    name: str
    label: str
    target_label: str
    choices: Callable[[], list[str]]  # the targets it accepts (shown as suggestions)
    run: Callable[[str], str]  # -> what was done, for the message and the admin log


def known_data_types() -> list[str]:
    return sorted(set(settings.TTL) | set(settings.KEY_DATA_TYPES.values()))


def known_namespaces() -> list[str]:
    """Declared key levels, as patterns, plus every first key part the settings know."""
    from ..namespaces import levels

    return sorted({str(pattern) for pattern in levels.patterns()} | set(settings.KEY_DATA_TYPES) | set(settings.TTL))


def _namespace_is_known(namespace: str) -> bool:
    from ..namespaces import levels

    try:
        parts = parse_key(namespace)
    except (TypeError, ValueError):
        return False
    if len(parts) == 1:
        first_parts = {str(pattern).split(":", 1)[0] for pattern in levels.patterns()}
        return parts[0] in first_parts | set(settings.KEY_DATA_TYPES) | set(settings.TTL)
    return levels.is_level(namespace)


def _invalidate_namespace(namespace: str) -> str:
    from ..invalidation import invalidate

    if not _namespace_is_known(namespace):
        raise ValueError(f"Unknown namespace {namespace!r}: not a declared key level. Known: {', '.join(known_namespaces()) or 'none'}.")
    retired = invalidate(prefixes=[namespace], cache=caches[settings.CACHE_ALIAS])
    return f"Invalidated namespace {namespace!r} ({len(retired.namespaces)} namespace retired) in every tier and process."


def _invalidate_data_type(data_type: str) -> str:
    from ..invalidation import invalidate

    if data_type not in known_data_types():
        raise ValueError(f"Unknown data type {data_type!r}. Known: {', '.join(known_data_types())}.")
    retired = invalidate(data_types=[data_type], cache=caches[settings.CACHE_ALIAS])
    return f"Invalidated data type {data_type!r} (namespaces {', '.join(sorted(retired.namespaces))}) in every tier and process."


def _refresh_view(view: str) -> str:
    from ..db.refresh import refresh_view
    from ..db.registry import all_views

    if view not in all_views():
        raise ValueError(f"No materialized view {view!r}. Known: {', '.join(all_views()) or 'none'}.")
    try:
        result = refresh_view(view, trigger="manual")
    except RefreshFailed as error:
        raise ValueError(f"Refreshing {view!r} failed: {error}") from error
    return f"Refreshed view {view!r}: {result.rows} rows in {result.duration_ms:.0f} ms."


ALL_STEPS = "all"


def _warming_steps() -> list[str]:
    """What the warm action accepts: the declared default plan's steps, or all of them."""
    from ..warming import declared

    plan = declared("default")
    return [] if plan is None else [ALL_STEPS, *(step.name for step in plan.ordered())]


def _warm(target: str) -> str:
    """Warm here (within the plan's budgets), then ask every listening worker to warm its own L1."""
    from .. import warming

    if target not in _warming_steps():
        raise ValueError(f"No warming step {target!r}. Known: {', '.join(_warming_steps()) or 'none (no plan declared)'}.")
    only = None if target == ALL_STEPS else [target]
    run = warming.warm(only=only)
    asked = warming.trigger(only)
    return (
        f"Warmed {target!r}: {run.entries} entries in {run.seconds:.2f} s, {run.errors} error(s) here; "
        f"{asked} worker(s) asked to warm too."
    )


CLEAR = "clear"


def _switch_choices() -> list[str]:
    """What the switch action accepts: ``name=on``, ``name=off``, ``name=<percent>`` or ``name=clear``."""
    from .. import switches

    return [f"{name}={value}" for name in switches.REGISTRY for value in ("on", "off", "50", CLEAR)]


def _switch_problem(target: str) -> str | None:
    """Why ``name=value`` is not a switch change, or None when it is one."""
    from .. import switches

    name, _, value = target.partition("=")
    name, value = name.strip(), value.strip()
    if name not in switches.REGISTRY:
        return f"No switch {name!r}. Known: {', '.join(switches.REGISTRY)}."
    if value == CLEAR:
        return None
    try:
        switches.parse_value(value)
    except ValueError as error:
        return f"Switch {name!r}: {error} (or clear)."
    return None


def _set_switch(target: str) -> str:
    """Set (or clear) a switch's runtime value; every worker applies it within a second."""

    problem = _switch_problem(target)
    if problem:
        raise ValueError(problem)
    name, _, value = (part.strip() for part in target.partition("="))
    try:
        return _write_switch(name, value)
    except Exception as error:  # no L2, Redis down: a message, and nothing changed
        raise ValueError(f"Switch {name!r} could not be written to Redis ({type(error).__name__}: {error}).") from error


def _write_switch(name: str, value: str) -> str:
    from .. import switches

    if value == CLEAR:
        switches.clear(name)
        return f"Cleared switch {name!r}: its setting ({switches.get(name).setting:g} %) applies again in every worker within a second."
    share = switches.set(name, value)
    return f"Switch {name!r} set to {share:g} % at runtime; every worker applies it within a second."


def _views() -> list[str]:
    from ..db.registry import all_views

    return all_views()


ACTIONS = {
    action.name: action
    for action in (
        Action("invalidate_namespace", "Invalidate a namespace", "namespace (e.g. auth:user:123)", known_namespaces, _invalidate_namespace),
        Action("invalidate_data_type", "Invalidate a data type", "data type", known_data_types, _invalidate_data_type),
        Action("refresh_view", "Refresh a materialized view", "view", _views, _refresh_view),
        Action("warm", "Warm the cache", "warming step (or all)", _warming_steps, _warm),
        Action("switch", "Set a switch", "switch=on, off, a percentage or clear", _switch_choices, _set_switch),
    )
}


def validate(name: str, target: str) -> Outcome:
    """Whether an action could run on this target, without running it (the confirmation page asks only then)."""
    action = ACTIONS.get(name)
    if action is None:
        return Outcome(False, f"Unknown action {name!r}.")
    target = target.strip()
    if not target:
        return Outcome(False, f"{action.label}: say which {action.target_label}.")
    if name == "invalidate_namespace" and not _namespace_is_known(target):
        return Outcome(False, f"Unknown namespace {target!r}: not a declared key level. Nothing was changed.")
    if name == "invalidate_data_type" and target not in known_data_types():
        return Outcome(False, f"Unknown data type {target!r}. Nothing was changed.")
    if name == "refresh_view" and target not in _views():
        return Outcome(False, f"No materialized view {target!r}. Nothing was changed.")
    if name == "warm" and target not in _warming_steps():
        return Outcome(False, f"No warming step {target!r}. Nothing was changed.")
    if name == "switch" and _switch_problem(target):
        return Outcome(False, f"{_switch_problem(target)} Nothing was changed.")
    return Outcome(True, f"{action.label}: {target}")


def run(name: str, target: str) -> Outcome:
    """Validate, then run; a failure is a message, never a traceback."""
    checked = validate(name, target)
    if not checked.ok:
        return checked
    try:
        return Outcome(True, ACTIONS[name].run(target.strip()))
    except ValueError as error:
        return Outcome(False, f"{error} Nothing was changed.")
