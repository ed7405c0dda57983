"""Namespace tokens: invalidate every key under a prefix in O(1), without scanning keys.

A namespace is a key prefix such as ``generation:456`` or ``auth:user:123``
(or a tag that readers name explicitly). It owns a token: a short random
string stored in the cache itself under ``ns:<namespace>``, created lazily by
``cache.add`` and kept without timeout. A cached read puts the current tokens
of the namespaces it depends on into its physical key, so retiring a
namespace is one ``cache.set`` of a new token: every key stamped with the old
token becomes unreachable at once and ages out by its TTL.

Why the pieces are what they are:

- The token is a ``str`` so TieredCache holds it in L1: reading it costs an
  L1 hit, not a Redis round trip (integers live in Redis only).
- It is random rather than a counter, so a token lost from the cache (evicted,
  flushed) and recreated can never equal a token still stamped on old keys.
- Readers take the tokens before they read the database; a value computed from
  data read before an invalidation is therefore stored under the old token and
  never served after it (see ``velro_cache.reads``).
- Only declared levels carry tokens (``Levels``): the key's first part (its
  data type) always, then the prefixes that model declarations name. A read
  costs one cache lookup per level, typically two.
- Retired keys are reclaimed, not left to their TTL (a generation PATCHed
  2,000 times held 2,001 copies in Redis): a fill records its physical key in
  a Redis set per namespace and token (``member_sets``, in the store's own
  round trip, on the miss path only; ``track`` for batches), and ``retire`` deletes the members of the retired
  token's set in bounded batches (``reclaim``). No key is scanned; what a
  bounded retire leaves, or a set lost with Redis, ages out by its TTL as before.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis

from .keys import SEPARATOR, STAMP_MARK, data_type_segment, digest, parse_key
from .tiers.redis import add_members

TOKEN_KEY_TYPE = "ns"  # reserved first part: the tokens' own keys
TOKEN_BYTES = 6  # 48 random bits, 8 characters
# Above this length a stamped key keeps only its data type and a digest of the
# rest, so KEY_PREFIX + version + key stays under memcached's 250 characters
# (the limit Django's key validation warns about).
MAX_STAMPED_LENGTH = 200
_MEMO_LIMIT = 50_000
MEMBERS_KEY_TYPE = "nsk"  # reserved first part: the sets of keys stamped with one token
RECLAIM_BATCH = 250  # keys popped and deleted per round trip
RECLAIM_LIMIT = 1000  # keys reclaimed per retired namespace inside one retire (the rest age out)
# A member set outlives its members (their TTL is jittered and adapted): it is
# given this many times the longest TTL tracked in it, plus a minute.
MEMBERS_TTL_FACTOR = 2

logger = logging.getLogger("velro_cache")


def token_key(namespace: str) -> str:
    """Where a namespace's token lives in the cache."""
    return TOKEN_KEY_TYPE + SEPARATOR + namespace


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def current_tokens(cache: Any, namespaces: Sequence[str]) -> list[str]:
    """The namespaces' tokens, creating missing ones (``add`` so concurrent creators agree).

    One token L1 lacks (a first read of a row's namespace) costs one round
    trip, found or created: ``TieredCache.get_or_add``. Several cost one
    ``get_many`` together, then one round trip per token still missing.
    """
    keys = [token_key(namespace) for namespace in namespaces]
    if len(keys) == 1:
        # With get_or_add the creation reads the token too: no read before it.
        token = None if hasattr(cache, "get_or_add") else cache.get(keys[0])
        return [token if token is not None else _create_token(cache, keys[0])]
    found = cache.get_many(keys)
    return [found[key] if found.get(key) is not None else _create_token(cache, key) for key in keys]


def _create_token(cache: Any, key: str) -> str:
    """A new token for ``key``, unless another process's is there: the one the cache keeps."""
    get_or_add = getattr(cache, "get_or_add", None)
    if get_or_add is not None:
        return get_or_add(key, new_token(), None)
    token = new_token()
    if cache.add(key, token, None):
        return token
    # Someone else created it first; if it vanished again meanwhile, our token
    # is as good as any (nothing can be stored under it yet).
    return cache.get(key) or token


def retire(cache: Any, namespaces: Iterable[str]) -> list[str]:
    """Give each namespace a new token, then reclaim the keys stamped with the old one; the namespaces retired."""
    names = sorted(set(namespaces))
    if names:
        old = cache.get_many([token_key(name) for name in names]) if _members_client(cache) is not None else {}
        cache.set_many({token_key(name): new_token() for name in names}, None)
        reclaim(cache, {name: old[token_key(name)] for name in names if isinstance(old.get(token_key(name)), str)})
    return names


def members_key(namespace: str, token: str) -> str:
    """The set of keys stamped with ``token`` for ``namespace`` (a cache key, prefixed like any other)."""
    return f"{MEMBERS_KEY_TYPE}{SEPARATOR}{namespace}{SEPARATOR}{token}"


def _members_client(cache: Any) -> Any:
    """The raw Redis client reclaiming goes through: only a TieredCache with an L2 whose breaker is closed."""
    if not getattr(cache, "has_l2", False) or not cache.l2_trusted():
        return None
    return cache.get_client()


def track(cache: Any, names: Sequence[str], tokens: Sequence[str], stamped: Sequence[str], seconds: float | None) -> None:
    """Record ``stamped`` keys under each namespace's token, so retiring that token can delete them.

    Best effort by design: a key not recorded (Redis refused, the breaker
    open) is only left to age out by its TTL, as every key was before.
    A single read-through fill does not come here: its ``member_sets`` ride
    in the store's own round trip (``reads.cached_read``).
    """
    client = _members_client(cache)
    sets = [] if client is None else member_sets(cache, names, tokens, stamped, seconds)
    if not sets:
        return
    try:
        pipe = client.pipeline(transaction=False)
        add_members(pipe, sets)
        pipe.execute()
    except redis.RedisError as exc:
        logger.debug("velro_cache: keys of %s not tracked for reclaiming: %s", names, type(exc).__name__)


def member_sets(
    cache: Any, names: Sequence[str], tokens: Sequence[str], stamped: Sequence[str], seconds: float | None
) -> list[tuple[str, str, int | None]]:
    """``(set key, member, TTL)`` for each stamped key under each namespace's token; none when nothing will be stored or tracked."""
    if not stamped or (seconds is not None and seconds <= 0) or _members_client(cache) is None:
        return []
    ttl = None if seconds is None else math.ceil(seconds * MEMBERS_TTL_FACTOR) + 60
    return [(cache.make_key(members_key(name, token)), key, ttl) for name, token in zip(names, tokens) for key in stamped]


def reclaim(cache: Any, retired: Mapping[str, str]) -> int:
    """Delete the keys stamped with each retired ``{namespace: old token}``, at most RECLAIM_LIMIT each; the number deleted.

    Those keys can never be read again (no reader stamps a retired token), so
    deleting them changes nothing a caller sees; it frees their memory now
    instead of at their TTL. Deletion goes through ``cache.delete_many``: L1
    copies and other processes' copies go too, and a cluster's slots are handled there.
    """
    client = _members_client(cache)
    if client is None:
        return 0
    deleted = 0
    for name, token in retired.items():
        key = cache.make_key(members_key(name, token))
        try:
            deleted += _reclaim_set(cache, client, key)
        except redis.RedisError as exc:
            logger.debug("velro_cache: keys of retired %s not reclaimed: %s", name, type(exc).__name__)
    return deleted


def _reclaim_set(cache: Any, client: Any, key: str) -> int:
    deleted = 0
    while deleted < RECLAIM_LIMIT:
        members = client.spop(key, min(RECLAIM_BATCH, RECLAIM_LIMIT - deleted))
        if not members:
            client.delete(key)
            break
        cache.delete_many([member.decode() for member in members])
        deleted += len(members)
    return deleted


def stamp(key: str, tokens: Sequence[str]) -> str:
    """The physical key: the logical key plus the tokens it was read under."""
    stamped = f"{key}{SEPARATOR}{STAMP_MARK}{'.'.join(tokens)}"
    if len(stamped) <= MAX_STAMPED_LENGTH:
        return stamped
    folded = f"{data_type_segment(key)}{SEPARATOR}#{digest(key.encode())}"
    return f"{folded}{SEPARATOR}{STAMP_MARK}{'.'.join(tokens)}"


class Pattern:
    """A declared level: literal parts and wildcards (``None``), e.g. ``generation:*``.

    ``exact`` levels (declared keys) match keys of their own length only;
    prefix levels match any key at least as long.
    """

    __slots__ = ("parts", "exact", "data_type")

    def __init__(self, parts: Sequence[str | None], exact: bool = False) -> None:
        data_type = parts[0] if parts else None
        if data_type is None:
            raise ValueError("a namespace level must start with a literal data type")
        self.parts = tuple(parts)
        self.exact = exact
        self.data_type: str = data_type  # parts[0], never a wildcard

    def match(self, key_parts: Sequence[str]) -> str | None:
        """The namespace this level gives the key, or None when it does not apply."""
        size = len(self.parts)
        if len(key_parts) < size or (self.exact and len(key_parts) != size):
            return None
        for mine, theirs in zip(self.parts, key_parts):
            if mine is not None and mine != theirs:
                return None
        return SEPARATOR.join(key_parts[:size])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pattern) and (self.parts, self.exact) == (other.parts, other.exact)

    def __hash__(self) -> int:
        return hash((self.parts, self.exact))

    def __str__(self) -> str:
        return SEPARATOR.join("*" if part is None else part for part in self.parts)

    def __repr__(self) -> str:
        return f"Pattern({str(self)!r}{', exact' if self.exact else ''})"


class Levels:
    """Which prefixes of a key carry a token: its data type, then the declared levels."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_type: dict[str, tuple[Pattern, ...]] = {}
        self._memo: dict[str, tuple[str, ...]] = {}

    def declare(self, pattern: Pattern) -> None:
        with self._lock:
            current = self._by_type.get(pattern.data_type, ())
            if pattern not in current:
                self._by_type[pattern.data_type] = (*current, pattern)
            self._memo = {}

    def reset(self) -> None:
        with self._lock:
            self._by_type = {}
            self._memo = {}

    def patterns(self) -> list[Pattern]:
        return [pattern for group in self._by_type.values() for pattern in group]

    def is_level(self, namespace: str) -> bool:
        """Whether keys can carry this namespace's token (else retiring it reaches nothing but tags)."""
        parts = parse_key(namespace)
        if len(parts) == 1:
            return True
        return any(len(p.parts) == len(parts) and p.match(parts) is not None for p in self._by_type.get(parts[0], ()))

    def namespaces_of(self, key: str) -> tuple[str, ...]:
        """The key's namespaces, most general first (memoized: this is on every read)."""
        found = self._memo.get(key)
        if found is not None:
            return found
        parts = parse_key(key)
        names = [parts[0]]
        for pattern in self._by_type.get(parts[0], ()):
            name = pattern.match(parts)
            if name is not None and name not in names:
                names.append(name)
        names[1:] = sorted(names[1:], key=lambda name: name.count(SEPARATOR))
        found = tuple(names)
        memo = self._memo
        if len(memo) >= _MEMO_LIMIT:
            memo.clear()
        memo[key] = found
        return found


levels = Levels()
