"""``invalidate()``: the explicit way, for raw SQL and anything else that sends no signal."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import DEFAULT_DB_ALIAS, models

from ..exceptions import NotRegistered
from ..keys import KeyLike, as_key
from ..ttl import ttl_rules
from .declarations import registry
from .retirement import Retirement, combined
from .transactions import schedule


def _as_namespaces(values: Iterable[KeyLike] | str) -> set[str]:
    """One key as a str, or a collection of keys (each a str or a tuple of parts)."""
    if isinstance(values, str):
        values = [values]
    return {as_key(value) for value in values}


def data_type_segments(data_type: str) -> set[str]:
    """Every first key part that maps to ``data_type`` (and the name itself)."""
    segments = {segment for segment, name in ttl_rules().data_types.items() if name == data_type}
    return segments | {as_key(data_type)}


def retirement_for(target: Any) -> Retirement:
    """What invalidating one target means: an instance, a model class, a queryset or a list of instances."""
    if isinstance(target, models.Model):
        declarations = registry.declarations_for(type(target))
        if not declarations:
            _unregistered(type(target))
        # The row as the database has it counts too (one query by pk): an
        # instance changed in memory must also retire what its stored values fed.
        stored = None
        if target.pk is not None:
            stored = type(target)._base_manager.using(target._state.db or DEFAULT_DB_ALIAS).filter(pk=target.pk).first()
        return combined(d.retirement(row) for d in declarations for row in (target, stored) if row is not None)
    if isinstance(target, type) and issubclass(target, models.Model):
        declarations = registry.declarations_for(target)
        if not declarations:
            _unregistered(target)
        return combined(d.coarse_retirement() for d in declarations)
    if isinstance(target, models.Manager):
        target = target.all()
    if isinstance(target, (models.QuerySet, list, tuple, set)):
        return combined(retirement_for(item) for item in target)
    raise TypeError(f"cannot invalidate a {type(target).__name__}: pass instances, models, querysets or keyword namespaces")


def _unregistered(model: type[models.Model]) -> None:
    raise NotRegistered(f"{model._meta.label} has no cache declarations: register one with velro_cache.register")


def _database_of(targets: tuple[Any, ...]) -> str:
    for target in targets:
        if isinstance(target, models.Model) and target._state.db:
            return target._state.db
        if isinstance(target, models.QuerySet):
            return target.db
    return DEFAULT_DB_ALIAS


def invalidate(
    *targets: Any,
    prefixes: Iterable[KeyLike] | str = (),
    tags: Iterable[KeyLike] | str = (),
    keys: Iterable[KeyLike] | str = (),
    data_types: Iterable[str] | str = (),
    using: str | None = None,
    cache: Any = None,
) -> Retirement:
    """Invalidate cached data once the current transaction commits (at once outside one).

    ``targets``: model instances (their declared keys, prefixes and tags),
    model classes (every data type their declarations use: coarse, O(1)),
    querysets or lists of instances. ``prefixes``/``tags``: namespaces, as
    built keys or tuples of parts. ``keys``: plain keys, deleted, and retired
    as namespaces for cached reads of them. ``data_types``: everything of a
    data type (``"generation"`` retires ``generation:`` and ``gen:`` keys).
    ``using`` is the database whose transaction decides (default: the
    targets' own, else ``default``). Returns what is (or will be) retired.
    """
    retirement = combined(retirement_for(target) for target in targets)
    retirement.namespaces |= _as_namespaces(prefixes) | _as_namespaces(tags)
    key_names = _as_namespaces(keys)
    retirement.namespaces |= key_names
    retirement.keys |= key_names
    names = [data_types] if isinstance(data_types, str) else list(data_types)
    for name in names:
        retirement.namespaces |= data_type_segments(name)
    schedule(retirement, using or _database_of(targets), cache)
    return retirement
