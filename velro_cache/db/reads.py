"""L3 read-through: cached reads whose loader reads a materialized view.

Built on ``velro_cache.reads.cached_read``, like every cached read: the key is
``build_key("view", <view name>, *parts)``, the cache is the configured
alias (or the one passed), and namespace tokens, open transactions and the
fill mechanism apply as to any other read.

The view already answers "top 100 active users" from a few pages instead of
scanning the live tables; caching its answer in L1/L2 removes even that query.
Both layers are snapshots, so the cache entry lives exactly one refresh period
of its view: caching it longer would serve a snapshot older than the view's
own, caching it shorter would re-read a view that has not changed.

Staleness bound of a value returned by :func:`read_view` with respect to the
live tables::

    age <= TTL + view lag

- TTL is the view's refresh period (``register_view(period=...)``, else
  ``VELRO_CACHE["VIEW_REFRESH_PERIOD"]``) unless ``timeout`` is passed;
- view lag is how far the view trails its sources: at most the period when the
  view is refreshed on a schedule, and ``VIEW_REFRESH_DEBOUNCE`` plus one
  refresh (plus a refresh already running) after writes that trigger it.

So with the defaults (period 300 s, debounce 2 s, refresh on a schedule) a
value is at most ~10 minutes old; a caller that needs fresher data passes a
shorter ``timeout`` or reads the view directly. Writes that bypass signals
(``QuerySet.update``, ``bulk_create``) are only caught by the schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from django.core.cache.backends.base import DEFAULT_TIMEOUT

from .. import switches
from ..conf import settings as velro_settings
from ..keys import build_key
from ..reads import cached_read
from .registry import ViewRef, registry, view_name

T = TypeVar("T")
KEY_DATA_TYPE = "view"


def view_ttl(view: ViewRef) -> float:
    """The TTL of cached reads of ``view``: its refresh period."""
    spec = registry.get(view)
    return spec.refresh_period if spec is not None else float(velro_settings.VIEW_REFRESH_PERIOD)


def view_key(view: ViewRef, *parts: Any) -> str:
    """``view:<view name>:<parts...>``, built by ``build_key``: the first part groups these reads in stats."""
    return build_key(KEY_DATA_TYPE, view_name(view), *parts)


def read_view(
    view: ViewRef,
    key: Any,
    loader: Callable[[], T],
    *,
    cache: Any = None,
    timeout: Any = DEFAULT_TIMEOUT,
    live: Callable[[], T] | None = None,
) -> T:
    """``loader()``'s result (a query of ``view``), cached for the view's refresh period.

    ``key``: a tuple of parts, or one part (``"all"``); ``("a:b",)`` and
    ``("a", "b")`` are different keys. ``timeout``: ``DEFAULT_TIMEOUT`` (the
    default) is the view's refresh period, ``None`` never expires, a number
    is seconds. ``cache``: an alias or a cache (default
    ``VELRO_CACHE["CACHE_ALIAS"]``). Return plain data from the loader (lists
    of dicts), not querysets: they are what every tier can store.
    ``live``: the same answer from the live tables; with the ``view_reads``
    switch off for this key (``velro_cache.switches``) it is called instead,
    uncached (a live read has no refresh period to be cached for).
    """
    parts = key if isinstance(key, tuple) else (key,)
    if live is not None and not switches.on(switches.VIEW_READS, view_key(view, *parts)):
        return live()
    seconds = view_ttl(view) if timeout is DEFAULT_TIMEOUT else timeout
    return cached_read(view_key(view, *parts), loader, timeout=seconds, cache=cache)


__all__ = ["read_view", "view_key", "view_ttl"]
