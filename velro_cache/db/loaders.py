"""L3 read-through: cached reads whose loader reads a materialized view.

The view already answers "top 100 active users" from a few pages instead of
scanning the live tables; caching its answer in L1/L2 removes even that query.
Both layers are snapshots, so the cache entry lives exactly one refresh period
of its view: caching it longer would serve a snapshot older than the view's
own, caching it shorter would re-read a view that has not changed.

Staleness bound of a value returned by :func:`read_view` with respect to the
live tables::

    age <= TTL + view lag

- TTL is the view's refresh period (``register_view(period=...)``, else
  ``VELRO_CACHE["VIEW_REFRESH_PERIOD"]``) unless ``ttl`` is passed;
- view lag is how far the view trails its sources: at most the period when the
  view is refreshed on a schedule, and ``VIEW_REFRESH_DEBOUNCE`` plus one
  refresh (plus a refresh already running) after writes that trigger it.

So with the defaults (period 300 s, debounce 2 s, refresh on a schedule) a
value is at most ~10 minutes old; a caller that needs fresher data passes a
shorter ``ttl`` or reads the view directly. Writes that bypass signals
(``QuerySet.update``, ``bulk_create``) are only caught by the schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from django.core.cache import cache as default_cache
from django.core.cache.backends.base import BaseCache

from ..conf import settings as velro_settings
from .registry import ViewRef, registry, view_name

T = TypeVar("T")
_MISSING = object()
KEY_PREFIX = "view"


def view_ttl(view: ViewRef) -> float:
    """The TTL of cached reads of ``view``: its refresh period."""
    spec = registry.get(view)
    return spec.refresh_period if spec is not None else float(velro_settings.VIEW_REFRESH_PERIOD)


def view_key(view: ViewRef, *parts: Any) -> str:
    """``view:<view name>:<parts...>``: the first segment groups these reads in the cache's stats."""
    return ":".join([KEY_PREFIX, view_name(view), *(str(part) for part in parts)])


def read_view(
    view: ViewRef,
    key: str | tuple[Any, ...],
    loader: Callable[[], T],
    *,
    cache: BaseCache | None = None,
    ttl: float | None = None,
) -> T:
    """``loader()``'s result (a query of ``view``), cached for the view's refresh period.

    Runs the loader once per key across this process's threads when the cache
    offers ``get_or_load`` (TieredCache); on other caches it falls back to a
    plain get-then-set. Return plain data from the loader (lists of dicts),
    not querysets: they are what every tier can store.
    """
    target = cache if cache is not None else default_cache
    full_key = view_key(view, *(key if isinstance(key, tuple) else (key,)))
    timeout = view_ttl(view) if ttl is None else ttl
    get_or_load = getattr(target, "get_or_load", None)
    if get_or_load is not None:
        return get_or_load(full_key, loader, timeout=timeout)
    found = target.get(full_key, _MISSING)
    if found is not _MISSING:
        return found
    value = loader()
    target.set(full_key, value, timeout=timeout)
    return value


__all__ = ["read_view", "view_key", "view_ttl"]
