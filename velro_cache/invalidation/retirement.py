"""What one invalidation retires, and retiring it in the cache.

A ``Retirement`` is a set of namespaces (whose tokens are replaced) and a set
of plain keys (deleted, for data cached with the bare cache API). It is
computed when a model changes and applied when the change commits.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.core.cache import caches

from .. import namespaces, ttl
from ..conf import settings
from ..keys import data_type_segment

# More namespaces than this under one data type in one retirement (a bulk
# load, a mass delete) retire the data type's namespace instead: one write
# instead of thousands, with the same effect on readers.
COARSEN_OVER = 256


@dataclass
class Retirement:
    namespaces: set[str] = field(default_factory=set)
    keys: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.namespaces or self.keys)

    def __ior__(self, other: Retirement) -> Retirement:
        self.namespaces |= other.namespaces
        self.keys |= other.keys
        return self


def combined(retirements: Iterable[Retirement]) -> Retirement:
    """One retirement for many: a change that reaches several declarations or instances."""
    total = Retirement()
    for retirement in retirements:
        total |= retirement
    return total


def resolve_cache(cache: Any = None) -> Any:
    """A cache given as None (the configured alias), an alias, or an instance."""
    if cache is None:
        return caches[settings.CACHE_ALIAS]
    if isinstance(cache, str):
        return caches[cache]
    return cache


def coarsened(names: set[str]) -> set[str]:
    """Replace large groups of namespaces under one data type by the data type itself."""
    groups: dict[str, set[str]] = defaultdict(set)
    for name in names:
        groups[data_type_segment(name)].add(name)
    result: set[str] = set()
    for data_type, group in groups.items():
        result |= {data_type} if len(group) > COARSEN_OVER or data_type in group else group
    return result


def apply(retirement: Retirement, cache: Any = None) -> Retirement:
    """Retire now, in every tier (and, through the cache's coherence, every process).

    Errors are not swallowed: a lost invalidation must be loud, not silent.
    """
    target = resolve_cache(cache)
    names = coarsened(retirement.namespaces)
    namespaces.retire(target, names)
    if retirement.keys:
        target.delete_many(sorted(retirement.keys))
    for name in names:
        ttl.record_change(name)
    return Retirement(names, set(retirement.keys))
