"""django-redis's set, hash and sorted-set helpers on TieredCache: thin pass-throughs to Redis.

``sadd``/``smembers``/..., ``hset``/``hkeys``/... and ``zadd``/``zrange``/...
take django-redis 7's signatures and give its return values. They act on
Redis's own data types, so the L1 is never involved: nothing of them is held
in L1 and nothing is announced, except where a command overwrites a key of any
type (below). What this module adds to a plain pass-through:

* Members (and hash values) are signed frames of the cache's serializer, as
  every value TieredCache puts in Redis; a member that does not verify (written
  by someone without the signing key, or damaged) is skipped, counted in the
  ``corrupt`` counter of its key's data type and logged, never unpickled and
  never raised. Redis compares members byte for byte (``SISMEMBER``, ``SREM``,
  ``ZSCORE``, ``SINTER`` across keys, ``SMOVE`` between keys), so a member's
  frame must be the same bytes for the same value whatever key holds it: it is
  signed for one fixed context (``MEMBER_CONTEXT``) rather than for its key,
  with no expiry and never compressed (the compression switch may differ
  between processes). Integers are stored raw, as django-redis does (except as
  sorted-set members, where django-redis serializes them too), and read back
  strictly. Equal values must encode equally: a set or a dict whose iteration
  order differs between processes gives different bytes, as with django-redis.
* ``sscan``/``sscan_iter``'s ``match`` is a Redis glob over the decoded member
  (a str, or an int's decimal text), applied here to what SSCAN returns: a
  signed frame cannot be matched by Redis.
* Redis down (breaker open, or a call that fails) raises ``L2Unavailable``:
  a set's contents cannot be made up, and django-redis's empty answers would
  be indistinguishable from an empty set. Redis's own refusals (``WRONGTYPE``
  on a key holding a cached value, a score that is not a float) are raised as
  redis-py's ``ResponseError``, and arguments redis-py refuses as its
  ``DataError``, as django-redis raises them; neither counts as an outage.
* L1 coherence: ``SADD``, ``HSET``, ``ZADD``... on a key holding a cached value
  are refused by Redis (``WRONGTYPE``), and an L1 copy exists only while Redis
  holds its value (promotions take the time left in Redis, deletes and
  expiries are announced), so they cannot turn an L1-held key into a
  collection. ``sdiffstore``/``sinterstore``/``sunionstore`` overwrite their
  destination whatever it holds: after the store the destination is dropped
  from every process's L1 as ``delete`` drops it (if that announcement cannot
  be sent, the destination is deleted when Redis answers again, as any write
  not confirmed to every process).
* Redis Cluster: commands over several keys (``sdiff``, ``sinter``,
  ``sunion``, the ``*store`` variants, ``smove``) run as one command when the
  keys share a slot; otherwise they are computed here from per-key reads and
  writes, which is not atomic (a concurrent change to one of the keys may or
  may not be seen; ``smove`` is a ``SREM`` then an ``SADD``).

Without ``LOCATION`` (L1 only) every helper raises ``L2Required``. See
docs/migrating-from-django-redis.md.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator, Mapping
from functools import cached_property
from typing import Any

import redis
from redis.crc import key_slot

from .exceptions import CorruptEntry, L2Required, L2Unavailable
from .redis_api import glob_regex
from .serializers import INT64_MAX, INT64_MIN, Serializer
from .tiers.cluster import ClusterClient

logger = logging.getLogger("velro_cache")

# What every member frame is signed for instead of a Redis key (a NUL keeps it
# apart from any key Django's key function makes).
MEMBER_CONTEXT = "\x00velro_cache.collection-member"

# A collection's physical key and its data type's counters (``TieredCache._key``).
Where = tuple[str, Any]


class CollectionsMixin:
    """django-redis's set, hash and sorted-set calls on TieredCache (the attributes used are TieredCache's own)."""

    # Provided by TieredCache; declared for the type checker only.
    _l2: Any
    _state: Any
    _serializer: Any
    _key: Any
    _l2_call: Any
    _write_failed: Any

    # -- the wire: one deterministic, signed encoding of a member ------------------------
    @cached_property
    def _member_serializer(self) -> Serializer:
        """The cache's serializer (same keys, same pickle rule) that never compresses: equal members, equal bytes."""
        base = self._serializer
        return Serializer(
            signing_key=base.signing_key,
            fallback_keys=base.fallback_keys,
            pickle_fallback=base.pickle_fallback,
            compress_min_bytes=sys.maxsize,
        )

    def _encode_member(self, value: Any, allow_int: bool = True) -> bytes | int:
        """A member's bytes (an int raw when ``allow_int``, as django-redis stores them)."""
        if allow_int and type(value) is int and INT64_MIN <= value <= INT64_MAX:
            return value
        serializer = self._member_serializer
        codec, body = serializer.encode(value)
        return serializer.frame(codec, body, None, key=MEMBER_CONTEXT)

    def _decode_member(self, at: Where, raw: bytes) -> tuple[bool, Any]:
        """(verified, value) of one member read from ``at``; an unverified one is counted and logged."""
        serializer = self._member_serializer
        try:
            frame = serializer.unframe(raw, key=MEMBER_CONTEXT)
            return True, serializer.decode(frame.codec, frame.body)
        except CorruptEntry as exc:
            full, counters = at
            next(counters.corrupt)
            logger.warning("velro_cache: skipping an unverified member of %r: %s", full, exc)
            return False, None

    def _decoded(self, at: Where, raws: Iterable[bytes]) -> list[Any]:
        """The verified members of ``raws``, in order."""
        out = []
        for raw in raws:
            ok, value = self._decode_member(at, raw)
            if ok:
                out.append(value)
        return out

    def _decoded_scored(self, at: Where, pairs: Iterable[tuple[bytes, Any]]) -> list[tuple[Any, Any]]:
        """The verified ``(member, score)`` pairs, in order."""
        out = []
        for raw, score in pairs:
            ok, value = self._decode_member(at, raw)
            if ok:
                out.append((value, score))
        return out

    def _decoded_one(self, at: Where, raw: bytes | None) -> Any:
        """One member, or None for no member (or one that does not verify)."""
        return None if raw is None else self._decode_member(at, raw)[1]

    # -- the call ------------------------------------------------------------------------
    def _full(self, key: Any, version: int | None) -> str:
        return str(self._key(key, version)[0])

    def _at(self, key: Any, version: int | None) -> Where:
        """The physical key and its data type's counters (where unverified members are counted)."""
        full, counters = self._key(key, version)
        return full, counters

    def _redis(self, command: str, *args: Any, **kwargs: Any) -> Any:
        """One redis-py command behind the breaker: an outage raises ``L2Unavailable``, a refusal redis-py's error.

        The refusal is carried out of the guard as a value: the guard would
        turn it into ``L2Unavailable``, but Redis answered (``WRONGTYPE``...),
        which the caller must see as django-redis shows it.
        """
        method = getattr(self._client(command), command)

        def run() -> tuple[Any, redis.RedisError | None]:
            try:
                return method(*args, **kwargs), None
            except (redis.ResponseError, redis.DataError) as exc:  # DataError: redis-py refused the arguments
                if isinstance(exc, redis.exceptions.ClusterError):
                    raise  # CLUSTERDOWN and the like: an outage
                return None, exc

        run.__name__ = command
        result, refused = self._l2_call(run)
        if refused is not None:
            raise refused
        return result

    def _client(self, command: str) -> Any:
        """The L2's client (a ``ClusterClient`` on a cluster); ``L2Required`` without one."""
        if self._l2 is None:
            raise L2Required(f"{command} needs Redis (LOCATION): an L1-only cache holds no Redis data types")
        return self._l2.client

    def _spans_slots(self, fulls: list[str]) -> bool:
        """Whether a multi-key command would get CROSSSLOT (only on a cluster, keys in different slots)."""
        if not isinstance(self._client("a multi-key set command"), ClusterClient):
            return False
        return len({key_slot(full.encode()) for full in fulls}) > 1

    def _retire(self, fulls: list[str]) -> None:
        """After a command overwrote ``fulls`` whatever they held: every process drops its L1 copy (as delete)."""
        self._state.forget_local(fulls)
        try:
            self._l2_call(self._l2.client.publish, self._l2.channel, self._state.drop_message(fulls))
        except L2Unavailable:
            self._write_failed(fulls)

    # -- set algebra, one command or computed here across cluster slots -------------------------
    def _algebra(self, op: str, fulls: list[str]) -> set[bytes]:
        """The raw members of SDIFF/SINTER/SUNION over ``fulls``."""
        if not self._spans_slots(fulls):
            return set(self._redis(op, fulls))
        first, *rest = (set(self._redis("smembers", full)) for full in fulls)
        for other in rest:
            first = first - other if op == "sdiff" else first & other if op == "sinter" else first | other
        return first

    def _algebra_read(self, op: str, keys: tuple[Any, ...], version: int | None) -> set[Any]:
        """SDIFF/SINTER/SUNION's verified members (an unverified one is counted at the first key)."""
        ats = [self._at(key, version) for key in keys]
        return set(self._decoded(ats[0], self._algebra(op, [full for full, _ in ats])))

    def _algebra_store(self, op: str, dest: str, fulls: list[str]) -> int:
        """SDIFFSTORE/SINTERSTORE/SUNIONSTORE: the size of the stored set; the destination leaves every L1."""
        spans = self._spans_slots([dest, *fulls])  # L2Required without Redis, before anything is retired
        try:
            if not spans:
                return int(self._redis(op + "store", dest, fulls))
            members = self._algebra(op, fulls)
            self._redis("delete", dest)  # as the *STORE commands: an empty result leaves no key
            if members:
                self._redis("sadd", dest, *members)
            return len(members)
        finally:
            # Also when the call failed: Redis may have overwritten dest and lost only the answer.
            self._retire([dest])

    # -- sets ----------------------------------------------------------------------------
    def sadd(self, key: Any, *values: Any, version: int | None = None) -> int:
        """Add members; how many were new."""
        return int(self._redis("sadd", self._full(key, version), *(self._encode_member(v) for v in values)))

    def scard(self, key: Any, version: int | None = None) -> int:
        return int(self._redis("scard", self._full(key, version)))

    def sdiff(self, *keys: Any, version: int | None = None) -> set[Any]:
        return self._algebra_read("sdiff", keys, version)

    def sdiffstore(self, dest: Any, *keys: Any, version_dest: int | None = None, version_keys: int | None = None) -> int:
        """Store the first set minus the others at ``dest`` (django-redis's separate versions for each)."""
        return self._algebra_store("sdiff", self._full(dest, version_dest), [self._full(key, version_keys) for key in keys])

    def sinter(self, *keys: Any, version: int | None = None) -> set[Any]:
        return self._algebra_read("sinter", keys, version)

    def sinterstore(self, dest: Any, *keys: Any, version: int | None = None) -> int:
        return self._algebra_store("sinter", self._full(dest, version), [self._full(key, version) for key in keys])

    def sunion(self, *keys: Any, version: int | None = None) -> set[Any]:
        return self._algebra_read("sunion", keys, version)

    def sunionstore(self, destination: Any, *keys: Any, version: int | None = None) -> int:
        return self._algebra_store("sunion", self._full(destination, version), [self._full(key, version) for key in keys])

    def sismember(self, key: Any, member: Any, version: int | None = None) -> bool:
        return bool(self._redis("sismember", self._full(key, version), self._encode_member(member)))

    def smismember(self, key: Any, *members: Any, version: int | None = None) -> list[bool]:
        encoded = [self._encode_member(member) for member in members]
        return [bool(found) for found in self._redis("smismember", self._full(key, version), encoded)]

    def smembers(self, key: Any, version: int | None = None) -> set[Any]:
        at = self._at(key, version)
        return set(self._decoded(at, self._redis("smembers", at[0])))

    def smove(self, source: Any, destination: Any, member: Any, version: int | None = None) -> bool:
        """Move a member between sets (``version`` applies to both; django-redis's destination takes the default)."""
        src, dest = self._full(source, version), self._full(destination, version)
        encoded = self._encode_member(member)
        if not self._spans_slots([src, dest]):
            return bool(self._redis("smove", src, dest, encoded))
        if not self._redis("srem", src, encoded):
            return False
        self._redis("sadd", dest, encoded)
        return True

    def spop(self, key: Any, count: int | None = None, version: int | None = None) -> Any:
        """One random member removed (None: empty), or with ``count`` a set of them."""
        at = self._at(key, version)
        popped = self._redis("spop", at[0], count)
        return set(self._decoded(at, popped)) if isinstance(popped, list) else self._decoded_one(at, popped)

    def srandmember(self, key: Any, count: int | None = None, version: int | None = None) -> Any:
        """One random member (None: empty), or with ``count`` a list of them (a negative count may repeat)."""
        at = self._at(key, version)
        picked = self._redis("srandmember", at[0], count)
        return self._decoded(at, picked) if isinstance(picked, list) else self._decoded_one(at, picked)

    def srem(self, key: Any, *members: Any, version: int | None = None) -> int:
        return int(self._redis("srem", self._full(key, version), *(self._encode_member(m) for m in members)))

    def sscan(self, key: Any, match: str | None = None, count: int | None = 10, version: int | None = None) -> set[Any]:
        """One SSCAN step's members (as django-redis: the first cursor page), ``match`` applied to decoded members."""
        at = self._at(key, version)
        _, page = self._redis("sscan", at[0], 0, None, count)
        return set(_matching(match, self._decoded(at, page)))

    def sscan_iter(self, key: Any, match: str | None = None, count: int | None = 10, version: int | None = None) -> Iterator[Any]:
        """Every member, lazily, page by page (each SSCAN call behind the breaker)."""
        at, cursor = self._at(key, version), 0
        while True:
            cursor, page = self._redis("sscan", at[0], cursor, None, count)
            yield from _matching(match, self._decoded(at, page))
            if int(cursor) == 0:
                return

    # -- hashes (fields raw, as django-redis; values signed like members) ---------------------------
    def hset(
        self, key: Any, field: Any = None, value: Any = None, mapping: Mapping[Any, Any] | None = None, version: int | None = None
    ) -> int:
        """Set ``field`` (and/or every field of ``mapping``); how many fields were new."""
        return int(
            self._redis(
                "hset",
                self._full(key, version),
                key=field,
                value=None if value is None else self._encode_member(value),
                mapping=None if mapping is None else {f: self._encode_member(v) for f, v in mapping.items()},
            )
        )

    def hdel(self, key: Any, field: Any, version: int | None = None) -> int:
        return int(self._redis("hdel", self._full(key, version), field))

    def hlen(self, key: Any, version: int | None = None) -> int:
        return int(self._redis("hlen", self._full(key, version)))

    def hkeys(self, key: Any, version: int | None = None) -> list[str]:
        return [field.decode() if isinstance(field, bytes) else field for field in self._redis("hkeys", self._full(key, version))]

    def hexists(self, key: Any, field: Any, version: int | None = None) -> bool:
        return bool(self._redis("hexists", self._full(key, version), field))

    # -- sorted sets (members always serialized, as django-redis; scores as Redis gives them) -----------
    def zadd(
        self,
        key: Any,
        mapping: Mapping[Any, float],
        nx: bool = False,
        xx: bool = False,
        ch: bool = False,
        incr: bool = False,
        gt: bool = False,
        lt: bool = False,
        version: int | None = None,
    ) -> Any:
        """Add or update members; redis-py's answer (a count, or with ``incr`` the new score)."""
        encoded = {self._encode_member(member, allow_int=False): score for member, score in mapping.items()}
        return self._redis("zadd", self._full(key, version), encoded, nx=nx, xx=xx, ch=ch, incr=incr, gt=gt, lt=lt)

    def zcard(self, key: Any, version: int | None = None) -> int:
        return int(self._redis("zcard", self._full(key, version)))

    def zcount(self, key: Any, min: float | str, max: float | str, version: int | None = None) -> int:
        return int(self._redis("zcount", self._full(key, version), min, max))

    def zincrby(self, key: Any, amount: float, value: Any, version: int | None = None) -> float:
        return float(self._redis("zincrby", self._full(key, version), amount, self._encode_member(value, allow_int=False)))

    def zpopmax(self, key: Any, count: int | None = None, version: int | None = None) -> Any:
        """The highest ``(member, score)`` removed (None: empty), or with ``count`` a list of them."""
        return self._popped("zpopmax", key, count, version)

    def zpopmin(self, key: Any, count: int | None = None, version: int | None = None) -> Any:
        """The lowest ``(member, score)`` removed (None: empty), or with ``count`` a list of them."""
        return self._popped("zpopmin", key, count, version)

    def _popped(self, command: str, key: Any, count: int | None, version: int | None) -> Any:
        at = self._at(key, version)
        decoded = self._decoded_scored(at, self._redis(command, at[0], count) or [])
        if count is None:
            return decoded[0] if decoded else None
        return decoded

    def _ranged(self, at: Where, result: list[Any], withscores: bool) -> list[Any]:
        return self._decoded_scored(at, result) if withscores else self._decoded(at, result)

    def zrange(
        self,
        key: Any,
        start: int,
        end: int,
        desc: bool = False,
        withscores: bool = False,
        score_cast_func: type = float,
        version: int | None = None,
    ) -> list[Any]:
        at = self._at(key, version)
        result = self._redis("zrange", at[0], start, end, desc=desc, withscores=withscores, score_cast_func=score_cast_func)
        return self._ranged(at, result, withscores)

    def zrevrange(
        self, key: Any, start: int, end: int, withscores: bool = False, score_cast_func: type = float, version: int | None = None
    ) -> list[Any]:
        at = self._at(key, version)
        result = self._redis("zrevrange", at[0], start, end, withscores=withscores, score_cast_func=score_cast_func)
        return self._ranged(at, result, withscores)

    def zrangebyscore(
        self,
        key: Any,
        min: float | str,
        max: float | str,
        start: int | None = None,
        num: int | None = None,
        withscores: bool = False,
        score_cast_func: type = float,
        version: int | None = None,
    ) -> list[Any]:
        at = self._at(key, version)
        result = self._redis("zrangebyscore", at[0], min, max, start=start, num=num, withscores=withscores, score_cast_func=score_cast_func)
        return self._ranged(at, result, withscores)

    def zrevrangebyscore(
        self,
        key: Any,
        max: float | str,
        min: float | str,
        start: int | None = None,
        num: int | None = None,
        withscores: bool = False,
        score_cast_func: type = float,
        version: int | None = None,
    ) -> list[Any]:
        at = self._at(key, version)
        result = self._redis(
            "zrevrangebyscore", at[0], max, min, start=start, num=num, withscores=withscores, score_cast_func=score_cast_func
        )
        return self._ranged(at, result, withscores)

    def zrank(self, key: Any, value: Any, withscore: bool = False, version: int | None = None) -> Any:
        """The member's rank from the lowest score (with ``withscore``: ``[rank, score]``); None: not a member."""
        return self._redis("zrank", self._full(key, version), self._encode_member(value, allow_int=False), withscore=withscore)

    def zrem(self, key: Any, *values: Any, version: int | None = None) -> int:
        encoded = [self._encode_member(value, allow_int=False) for value in values]
        return int(self._redis("zrem", self._full(key, version), *encoded))

    def zremrangebyscore(self, key: Any, min: float | str, max: float | str, version: int | None = None) -> int:
        return int(self._redis("zremrangebyscore", self._full(key, version), min, max))

    def zscore(self, key: Any, value: Any, version: int | None = None) -> float | None:
        return self._redis("zscore", self._full(key, version), self._encode_member(value, allow_int=False))


def _matching(pattern: str | None, members: list[Any]) -> Iterator[Any]:
    """``members`` whose text (a str, or an int's decimal digits) matches the Redis glob ``pattern``."""
    if not pattern:
        yield from members
        return
    matcher = glob_regex(pattern)
    for member in members:
        text = member if isinstance(member, str) else str(member) if type(member) is int else None
        if text is not None and matcher.fullmatch(text):
            yield member


__all__ = ["CollectionsMixin", "MEMBER_CONTEXT"]
