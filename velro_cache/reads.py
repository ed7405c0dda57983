"""Cached reads that stay true: namespaces, the TTL policy and open transactions in one call.

``cached_read(key, loader)`` is what a project calls instead of
``cache.get``/``cache.set``. Per read it:

1. finds the key's namespaces (its data type and every declared level above
   it, plus the ``tags`` it names);
2. bypasses the cache when this thread's open transaction wrote any of them
   (the cache holds the committed value, the transaction sees its own);
3. reads the namespaces' tokens *before* the loader touches the database and
   stamps them into the physical key, so a value loaded from data that an
   invalidation then replaced is stored under a retired token and never served;
4. loads through ``cache.get_or_load`` (single flight, leases, early refresh
   on TieredCache; plain get/set on other backends) with the TTL the policy
   gives the key's data type.

A loader's ``None`` is cached too: "no such row" is an answer worth keeping,
and the row's creation retires it like any other change.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, TypeVar

from django.core.cache.backends.base import DEFAULT_TIMEOUT

from .invalidation.retirement import resolve_cache
from .invalidation.transactions import dirty_namespaces
from .keys import KeyLike, as_key
from .namespaces import TOKEN_KEY_TYPE, current_tokens, levels, stamp, token_key
from .ttl import record_read, ttl_for

T = TypeVar("T", bound=Hashable)
BATCH_TTL_GROUPS = 4  # a batch is stored with this many different (jittered) TTLs


class _ByPolicy:
    def __repr__(self) -> str:
        return "BY_POLICY"


BY_POLICY: Any = _ByPolicy()
_MISSING = object()


def key_namespaces(key: KeyLike, tags: Iterable[KeyLike] = ()) -> tuple[str, tuple[str, ...]]:
    """The logical key and the namespaces a read of it depends on."""
    logical = key if type(key) is str else as_key(key)
    names = levels.namespaces_of(logical)  # validates str keys (memoized)
    if names[0] == TOKEN_KEY_TYPE:
        raise ValueError(f"{TOKEN_KEY_TYPE!r} is the reserved data type of namespace tokens")
    if tags:
        if isinstance(tags, str):
            tags = (tags,)
        names = tuple(dict.fromkeys([*names, *(as_key(tag) for tag in tags)]))
    return logical, names


def _seconds(key: str, timeout: Any) -> Any:
    if timeout is not BY_POLICY:
        return timeout
    seconds = ttl_for(key)
    return DEFAULT_TIMEOUT if seconds is None else seconds


def cached_read(
    key: KeyLike,
    loader: Callable[[], Any],
    *,
    tags: Iterable[KeyLike] = (),
    timeout: Any = BY_POLICY,
    cache: Any = None,
) -> Any:
    """``loader()``'s result through the cache, never stale after a committed invalidation.

    ``key``: a tuple of parts (``("generation", 456, "meta")``) or a key built
    by ``velro_cache.keys.build_key``. ``tags``: namespaces outside the key's
    own prefixes that the value depends on. ``timeout``: seconds (``None`` =
    forever) instead of the TTL policy. ``cache``: an alias or a cache
    (default ``VELRO_CACHE["CACHE_ALIAS"]``).
    """
    logical, names = key_namespaces(key, tags)
    dirty = dirty_namespaces()
    if dirty and not dirty.isdisjoint(names):
        return loader()
    target = resolve_cache(cache)
    physical = stamp(logical, current_tokens(target, names))
    record_read(logical)
    seconds = _seconds(logical, timeout)
    get_or_load = getattr(target, "get_or_load", None)
    if get_or_load is not None:
        return get_or_load(physical, loader, seconds)
    value = target.get(physical, _MISSING)
    if value is _MISSING:
        value = loader()
        target.set(physical, value, seconds)
    return value


def cached_read_many(
    keys: Mapping[T, KeyLike],
    load_missing: Callable[[list[T]], Mapping[T, Any]],
    *,
    tags: Iterable[KeyLike] = (),
    timeout: Any = BY_POLICY,
    cache: Any = None,
) -> dict[T, Any]:
    """Batch form of ``cached_read``: one cache round trip for the hits, one loader call for the rest.

    ``keys`` maps your ids to keys; ``load_missing(ids)`` returns ``{id:
    value}`` for the ids it can load. An id it leaves out reads as ``None``
    (and is cached as such, like a single read's ``None``).
    """
    tags = tuple(tags)
    plan = {item: key_namespaces(key, tags) for item, key in keys.items()}
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
    for item, (logical, _) in plan.items():
        record_read(logical)
    missing = [item for item in keys if item not in result]
    if missing:
        loaded = load_missing(missing)
        for item in missing:
            result[item] = loaded.get(item)
        _store(target, [(plan[item][0], physical[item], result[item]) for item in missing if item not in bypass], timeout)
    return {item: result[item] for item in keys}


def _store(target: Any, rows: list[tuple[str, str, Any]], timeout: Any) -> None:
    """``set_many`` in a few groups, each with its own TTL, so a batch does not expire at once."""
    for group in range(BATCH_TTL_GROUPS):
        chunk = rows[group::BATCH_TTL_GROUPS]
        if chunk:
            target.set_many({full: value for _, full, value in chunk}, _seconds(chunk[0][0], timeout))


def peek(key: KeyLike, default: Any = None, *, tags: Iterable[KeyLike] = (), cache: Any = None) -> Any:
    """What a ``cached_read`` of ``key`` would serve now, without loading or creating tokens."""
    logical, names = key_namespaces(key, tags)
    target = resolve_cache(cache)
    tokens = []
    for name in names:
        token = target.get(token_key(name))
        if token is None:
            return default
        tokens.append(token)
    return target.get(stamp(logical, tokens), default)
