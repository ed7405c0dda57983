"""The read API: every cached read goes through here, so every one of them stays true.

``cached_read(key, loader)`` is what a project calls instead of
``cache.get``/``cache.set`` (``acached_read`` in async code); ``cached_read_many`` is its batch form, ``peek``
looks without loading, ``@cached`` caches a function's results, and the
materialized-view reads (``velro_cache.db.reads.read_view``) are built on it.
Per read it:

1. finds the key's namespaces (its data type and every declared level above
   it, plus the ``tags`` it names);
2. bypasses the cache when this thread's open transaction wrote any of them
   (the cache holds the committed value, the transaction sees its own);
3. reads the namespaces' tokens *before* the loader touches the database and
   stamps them into the physical key, so a value loaded from data that an
   invalidation then replaced is stored under a retired token and never served;
4. loads through ``cache.get_or_load`` (single flight, leases, early refresh
   on TieredCache: ``velro_cache.fill``, where a miss costs two round trips
   and the stored key joins its namespaces' member sets in the second; plain
   get/set on other backends).

``timeout`` means what it means in Django's cache API, everywhere here:

- ``DEFAULT_TIMEOUT`` (the default): the default TTL, which for these reads is
  the key's data-type TTL (``velro_cache.ttl.ttl_for``: the data
  type's ``VELRO_CACHE["TTL"]``, adapted and jittered, else
  ``VELRO_CACHE["DEFAULT_TTL"]``);
- ``None``: never expire;
- a number: seconds; 0 or less: do not store.

Keys are tuples of parts or keys built by ``velro_cache.keys.build_key``; the
cache is ``VELRO_CACHE["CACHE_ALIAS"]`` unless an alias or a cache is passed.
A loader's ``None`` is cached too: "no such row" is an answer worth keeping,
and the row's creation retires it like any other change.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from django.core.cache.backends.base import DEFAULT_TIMEOUT

from .invalidation.retirement import resolve_cache
from .invalidation.transactions import dirty_namespaces
from .keys import SEPARATOR, KeyLike, as_key, data_type_segment
from .namespaces import TOKEN_KEY_TYPE, current_tokens, levels, member_sets, new_token, stamp, token_key, track
from .ttl import base_ttl, record_read, ttl_for

T = TypeVar("T", bound=Hashable)
BATCH_TTL_GROUPS = 4  # a batch's keys of one TTL are stored with this many different (jittered) TTLs
FUNCTION_DATA_TYPE = "fn"  # the data type of @cached results keyed by default
_MISSING = object()


def cached_read(
    key: KeyLike,
    loader: Callable[[], Any],
    *,
    tags: Iterable[KeyLike] = (),
    timeout: Any = DEFAULT_TIMEOUT,
    cache: Any = None,
) -> Any:
    """``loader()``'s result through the cache, never stale after a committed invalidation.

    ``key``: a tuple of parts (``("generation", 456, "meta")``) or a built key.
    ``tags``: namespaces outside the key's own prefixes that the value depends
    on. ``timeout``: see the module docstring (default: the key's data-type TTL, ``ttl_for``).
    ``cache``: an alias or a cache (default ``VELRO_CACHE["CACHE_ALIAS"]``).
    """
    logical, names = _namespaces(key, tags)
    dirty = dirty_namespaces()
    if dirty and not dirty.isdisjoint(names):
        return loader()
    target = resolve_cache(cache)
    tokens = current_tokens(target, names)
    physical = stamp(logical, tokens)
    record_read(logical)
    # A callable timeout is computed only when a value is stored: a hit costs no ``ttl_for``.
    lazy = (lambda: ttl_for(logical)) if timeout is DEFAULT_TIMEOUT else timeout
    get_or_load_tracked = getattr(target, "get_or_load_tracked", None)
    if get_or_load_tracked is not None:
        # The key joins its namespaces' member sets in the store's round trip, only when it is stored.
        return get_or_load_tracked(
            physical, loader, lazy, lambda: member_sets(target, names, tokens, [physical], _tracked_seconds(logical, timeout))
        )
    get_or_load = getattr(target, "get_or_load", None)
    if get_or_load is not None:

        def load_and_track() -> Any:
            value = loader()
            track(target, names, tokens, [physical], _tracked_seconds(logical, timeout))
            return value

        return get_or_load(physical, load_and_track, lazy)
    value = target.get(physical, _MISSING)
    if value is _MISSING:
        value = loader()
        _store(target, {physical: value}, _seconds(logical, timeout))
    return value


async def acached_read(
    key: KeyLike,
    loader: Callable[[], Any],
    *,
    tags: Iterable[KeyLike] = (),
    timeout: Any = DEFAULT_TIMEOUT,
    cache: Any = None,
) -> Any:
    """``cached_read`` for coroutines: the same key, tokens, TTLs and entries, awaited.

    A value stored by ``cached_read`` is served here and the other way round.
    ``loader`` may be a plain callable or return an awaitable (``async def``).
    On TieredCache the load is ``aget_or_load``'s: single flight across
    coroutines, threads and processes (``velro_cache.afill``); on another
    backend, Django's ``aget``/``aset_many``.

    Its body is ``cached_read``'s with ``await`` (written twice on purpose, as
    ``velro_cache.aio`` says why); the key, token and TTL steps are shared.
    """
    logical, names = _namespaces(key, tags)
    dirty = dirty_namespaces()
    if dirty and not dirty.isdisjoint(names):
        return await _awaited(loader())
    target = resolve_cache(cache)
    physical = stamp(logical, await _acurrent_tokens(target, names))
    record_read(logical)
    aget_or_load = getattr(target, "aget_or_load", None)
    if aget_or_load is not None:
        lazy = (lambda: ttl_for(logical)) if timeout is DEFAULT_TIMEOUT else timeout
        return await aget_or_load(physical, loader, lazy)
    value = await target.aget(physical, _MISSING)
    if value is _MISSING:
        value = await _awaited(loader())
        seconds = _seconds(logical, timeout)
        if seconds is None or seconds > 0:
            await target.aset_many({physical: value}, seconds)
    return value


def cached_read_many(
    keys: Mapping[T, KeyLike],
    load_missing: Callable[[list[T]], Mapping[T, Any]],
    *,
    tags: Iterable[KeyLike] = (),
    timeout: Any = DEFAULT_TIMEOUT,
    cache: Any = None,
) -> dict[T, Any]:
    """Batch form of ``cached_read``: one cache round trip for the hits, one loader call for the rest.

    ``keys`` maps your ids to keys; ``load_missing(ids)`` returns ``{id:
    value}`` for the ids it can load. An id it leaves out reads as ``None``
    (and is cached as such, like a single read's ``None``). Each loaded value
    is stored with its own key's TTL (``timeout`` as in ``cached_read``).
    """
    tags = tuple(tags)
    plan = {item: _namespaces(key, tags) for item, key in keys.items()}
    dirty = dirty_namespaces()
    bypass = {item for item, (_, names) in plan.items() if dirty and not dirty.isdisjoint(names)}
    target = resolve_cache(cache)
    wanted = list(dict.fromkeys(name for item, (_, names) in plan.items() if item not in bypass for name in names))
    tokens = dict(zip(wanted, current_tokens(target, wanted)))
    physical = {
        item: stamp(logical, [tokens[name] for name in names])
        for item, (logical, names) in plan.items()
        if item not in bypass
    }
    found = target.get_many(list(physical.values())) if physical else {}
    result = {item: found[full] for item, full in physical.items() if full in found}
    for logical, _ in plan.values():
        record_read(logical)
    missing = [item for item in keys if item not in result]
    if missing:
        loaded = load_missing(missing)
        for item in missing:
            result[item] = loaded.get(item)
        rows = [(plan[item][0], physical[item], result[item]) for item in missing if item not in bypass]
        _track_batch(target, plan, tokens, physical, [item for item in missing if item not in bypass], timeout)
        _store_batch(target, rows, timeout)
    return {item: result[item] for item in keys}


def peek(key: KeyLike, default: Any = None, *, tags: Iterable[KeyLike] = (), cache: Any = None) -> Any:
    """What a ``cached_read`` of ``key`` would serve now, without loading or creating tokens."""
    logical, names = _namespaces(key, tags)
    target = resolve_cache(cache)
    physical = _current_physical(target, logical, names)
    return default if physical is None else target.get(physical, default)


def cached(
    timeout: Any = DEFAULT_TIMEOUT,
    *,
    key: KeyLike | Callable[..., KeyLike] | None = None,
    tags: Iterable[KeyLike] | Callable[..., Iterable[KeyLike]] = (),
    cache: Any = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Cache a function's results through ``cached_read`` (namespaces, tokens, data-type TTLs and all).

    ``key`` is a prefix (a built key or a tuple of parts; default
    ``("fn", <module>, <qualname>)``) to which a digest of the arguments'
    reprs is appended - so use arguments with stable reprs (ids, strings) -
    or a callable taking the same arguments and returning the whole key: name
    the key under a declared prefix (``("generation", gen_id, "summary")``)
    and the model declarations invalidate it. ``tags``: namespaces, or a
    callable of the arguments returning them. ``timeout`` and ``cache`` as in
    ``cached_read``. ``wrapper.key_for(*args, **kwargs)`` is a call's logical
    key; ``wrapper.invalidate(*args, **kwargs)`` deletes its result now.
    """

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        prefix = as_key(key if isinstance(key, (str, tuple)) else (FUNCTION_DATA_TYPE, func.__module__, func.__qualname__))

        def key_for(*args: Any, **kwargs: Any) -> str:
            if callable(key):
                return as_key(key(*args, **kwargs))
            return prefix + SEPARATOR + _argument_digest(args, kwargs)

        def tags_for(*args: Any, **kwargs: Any) -> Iterable[KeyLike]:
            return tags(*args, **kwargs) if callable(tags) else tags

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return cached_read(
                key_for(*args, **kwargs), lambda: func(*args, **kwargs), tags=tags_for(*args, **kwargs), timeout=timeout, cache=cache
            )

        def invalidate(*args: Any, **kwargs: Any) -> None:
            logical, names = _namespaces(key_for(*args, **kwargs), tags_for(*args, **kwargs))
            target = resolve_cache(cache)
            physical = _current_physical(target, logical, names)
            if physical is not None:
                target.delete(physical)

        wrapper.key_for = key_for  # type: ignore[attr-defined]
        wrapper.invalidate = invalidate  # type: ignore[attr-defined]
        return wrapper

    return decorate


# -- internals ------------------------------------------------------------------------------


def _namespaces(key: KeyLike, tags: Iterable[KeyLike] = ()) -> tuple[str, tuple[str, ...]]:
    """The logical key and the namespaces a read of it depends on."""
    logical = key if type(key) is str else as_key(key)
    names = levels.namespaces_of(logical)  # validates str keys (memoized)
    if names[0] == TOKEN_KEY_TYPE:
        raise ValueError(f"{TOKEN_KEY_TYPE!r} is the reserved data type of namespace tokens")
    if tags:
        if isinstance(tags, str):
            tags = (tags,)
        # A tag carries its data type's token too, so retiring the data type
        # (a model's coarse retirement: a write whose rows are unknown) reaches it.
        tagged = [as_key(tag) for tag in tags]
        names = tuple(dict.fromkeys([*names, *(part for tag in tagged for part in (data_type_segment(tag), tag))]))
    return logical, names


def _current_physical(target: Any, logical: str, names: tuple[str, ...]) -> str | None:
    """The physical key under the current tokens; None when a token is missing (nothing can be stored)."""
    tokens = []
    for name in names:
        token = target.get(token_key(name))
        if token is None:
            return None
        tokens.append(token)
    return stamp(logical, tokens)


async def _acurrent_tokens(target: Any, names: Sequence[str]) -> list[str]:
    """``namespaces.current_tokens`` awaited: one ``aget_many`` for all, ``aadd`` for the missing (creators agree);
    one token, found or created in one round trip (``aget_or_add``)."""
    keys = [token_key(name) for name in names]
    if len(keys) == 1 and hasattr(target, "aget_or_add"):
        return [await target.aget_or_add(keys[0], new_token(), None)]
    found = await target.aget_many(keys)
    tokens = []
    for key in keys:
        token = found.get(key)
        if token is None:
            token = new_token()
            if not await target.aadd(key, token, None):
                token = await target.aget(key) or token  # someone else's came first
        tokens.append(token)
    return tokens


async def _awaited(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _tracked_seconds(logical: str, timeout: Any) -> float | None:
    """The longest a tracked key lives (for its namespace member set): the timeout, else its data type's TTL."""
    if timeout is DEFAULT_TIMEOUT:
        return ttl_for(logical)
    return None if callable(timeout) or timeout is None else float(timeout)


def _track_batch(
    target: Any, plan: Mapping[Any, tuple[str, tuple[str, ...]]], tokens: dict[str, str], physical: dict, items: list, timeout: Any
) -> None:
    """``track`` for a batch's stored keys: one call per set of namespaces they share."""
    groups: dict[tuple[str, ...], list[Any]] = {}
    for item in items:
        groups.setdefault(plan[item][1], []).append(item)
    for names, group in groups.items():
        longest = max((_tracked_seconds(plan[item][0], timeout) or math.inf) for item in group)
        track(target, names, [tokens[name] for name in names], [physical[item] for item in group], None if longest == math.inf else longest)


def _seconds(logical: str, timeout: Any) -> float | None:
    """``timeout`` as seconds to live (None: forever): DEFAULT_TIMEOUT asks ``ttl_for``."""
    return ttl_for(logical) if timeout is DEFAULT_TIMEOUT else timeout


def _store(target: Any, values: dict[str, Any], seconds: float | None) -> None:
    if seconds is None or seconds > 0:
        target.set_many(values, seconds)


def _store_batch(target: Any, rows: list[tuple[str, str, Any]], timeout: Any) -> None:
    """Store ``(logical, physical, value)`` rows, each with its own key's TTL, in few ``set_many`` calls.

    Rows are grouped by their data type's TTL (an explicit ``timeout`` makes
    one group); each group is stored in up to ``BATCH_TTL_GROUPS`` chunks,
    each with its own jittered TTL, so a batch does not expire at once.
    """
    groups: dict[Any, list[tuple[str, str, Any]]] = {}
    for row in rows:
        groups.setdefault(base_ttl(row[0]) if timeout is DEFAULT_TIMEOUT else None, []).append(row)
    for group in groups.values():
        for start in range(BATCH_TTL_GROUPS):
            chunk = group[start::BATCH_TTL_GROUPS]
            if chunk:
                _store(target, {full: value for _, full, value in chunk}, _seconds(chunk[0][0], timeout))


def _argument_digest(args: tuple, kwargs: dict) -> str:
    material = repr((args, sorted(kwargs.items()))).encode()
    return hashlib.blake2b(material, digest_size=12).hexdigest()


__all__ = ["acached_read", "cached", "cached_read", "cached_read_many", "peek"]
