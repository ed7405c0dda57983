"""TieredCache: Django's cache API over an in-process L1 and a Redis L2.

Reads go L1 -> L2 -> miss; an L2 hit is promoted into L1 with the time it has
left in L2 (bounded by ``OPTIONS["L1"]["MAX_AGE"]``), so L1 never outlives L2.
Writes go through both tiers and are announced to every other process, which
drops its L1 copy (``tiers.coherence``). Without ``LOCATION`` the cache is L1
only.

Redis failures never reach the caller: every L2 call goes through a circuit
breaker; a failed read is a miss, a failed write is remembered and replayed as
an invalidation when Redis is back (``tiers.process``). While L2 is lost, L1
is off too, because other processes' writes could not be heard.

The hot path is ``get`` on an L1 hit. It avoids Django's per-call key making
and validation (about half of LocMemCache's cost) by memoizing, per alias, the
final key of every string key that validated without warnings; keys that do
warn take the slow path every time so the warning is never swallowed.

Integers are stored raw in Redis so ``incr`` is an atomic ``INCRBY``; for the
same reason, in L1 + L2 mode integers are not held in L1 (another process's
``incr`` would leave a local copy stale).

The async API (``aget``, ``aset``, ... ``aget_or_set``) is native, on
``redis.asyncio``: ``velro_cache.aio`` builds each ``a*`` method from this
class's pure steps, awaiting only the L2 call.
"""

from __future__ import annotations

import hashlib
import logging
import math
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

from django.conf import settings as django_settings
from django.core.cache.backends.base import (
    DEFAULT_TIMEOUT,
    MEMCACHE_MAX_KEY_LENGTH,
    BaseCache,
    CacheKeyWarning,
    memcache_key_warnings,
)
from django.core.exceptions import ImproperlyConfigured

from . import fill
from .aio import AsyncTieredMixin
from .exceptions import CorruptEntry, L2Unavailable, NotPlannable, UnserializableValue, UnverifiedEntry
from .options import TieredOptions, parse_options
from .redis_api import RedisApiMixin
from .redis_collections import CollectionsMixin
from .serializers import OBJECT, Serializer, derive_signing_key
from .stats import L1_SAMPLE, DataTypeCounters
from .tiers import guard
from .tiers.breaker import CLOSED
from .tiers.copying import Reader, plan_copy, plan_on_first_read
from .tiers.errors import describe
from .tiers.guard import L2Guard
from .tiers.memory import MISSING
from .tiers.process import ProcessState, state_for
from .tiers.redis import NotACounter, ttl_ms

logger = logging.getLogger("velro_cache")

KEY_MEMO_LIMIT = 50_000
KEY_MEMOS_LIMIT = 64
# Python's own cost of an L1 entry beyond its key and body: the store's entry,
# the payload tuple and the dict slot. Counted so MAX_BYTES bounds real memory.
ENTRY_OVERHEAD = 160
_L1_SAMPLE_MASK = L1_SAMPLE - 1


# A TTL this long (about 31,700 years) is "forever": Redis cannot take it as
# PX, and LocMemCache keeps such a value (and one with timeout=inf) for ever.
FOREVER_SECONDS = 1e12
# incr/decr beyond what INCRBY can do retry their compare-and-set this often.
INCR_ATTEMPTS = 16


def _signing_keys(options: TieredOptions) -> tuple[bytes, list[bytes]]:
    """The key frames are signed with, and the older keys they still verify with.

    ``SIGNING_KEY`` with ``SIGNING_KEY_FALLBACKS``, or else keys derived from
    ``SECRET_KEY`` and ``SECRET_KEY_FALLBACKS``: a rotation done the Django way
    keeps every entry readable by old and new processes alike.
    """
    if options.signing_key:
        current, older = options.signing_key, list(options.signing_key_fallbacks)
    else:
        current, older = django_settings.SECRET_KEY, list(getattr(django_settings, "SECRET_KEY_FALLBACKS", ()))
    return derive_signing_key(current), [derive_signing_key(secret) for secret in older]


def _encodable_key(full: str) -> str:
    """``full`` itself, or for a key Redis cannot take (a lone surrogate) an injective stand-in.

    LocMemCache accepts any str; Redis keys are UTF-8. The stand-in keeps the
    text (prefix included, so ``clear`` finds it) with the surrogates replaced,
    plus a hash of the exact code points so two such keys never collide. Used
    in both modes so L1-only and L1+Redis agree.
    """
    try:
        full.encode()
        return full
    except UnicodeEncodeError:
        exact = full.encode("utf-8", "surrogatepass")
        return exact.decode("utf-8", "replace") + "#" + hashlib.blake2b(exact, digest_size=16).hexdigest()


def _key_warnings(full: str) -> list[str]:
    """Django's memcache key warnings for ``full``, without its per-character loop for a key that has none.

    A first read of a key pays its key making once; Django's check walks the
    key in Python (2-3 us of a first read). A printable ASCII key without a
    space, no longer than memcached's limit, has nothing to warn about.
    """
    if len(full) <= MEMCACHE_MAX_KEY_LENGTH and full.isascii() and full.isprintable() and " " not in full:
        return []
    return list(memcache_key_warnings(full))


class MisconfiguredCache(BaseCache):
    """Stands in for a TieredCache whose settings are invalid.

    Django's own system checks instantiate every configured cache, so raising
    in ``__init__`` would crash the check run before velro_cache's checks can
    report the problem with its id. Construction succeeds instead, and any use
    raises the same ``ImproperlyConfigured`` the checks describe.
    """

    def __init__(self, message: str, params: dict[str, Any]) -> None:
        super().__init__({key: value for key, value in params.items() if key != "OPTIONS"})
        self.message = message

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise ImproperlyConfigured(self.message)

    add = get = set = touch = delete = clear = get_many = set_many = delete_many = has_key = incr = _refuse
    # redis_api's django-redis calls, refused alike rather than an AttributeError.
    ttl = pttl = expire = pexpire = expire_at = pexpire_at = persist = lock = keys = iter_keys = delete_pattern = get_client = _refuse

    def close(self, **kwargs: Any) -> None:
        """Called by Django after every request; nothing to close."""


class TieredCache(CollectionsMixin, RedisApiMixin, AsyncTieredMixin, BaseCache):
    """A Django cache backend with an in-process L1 and an optional Redis L2 (extras: ``redis_api``; native async: ``aio``)."""

    def __new__(cls, location: Any = None, params: dict[str, Any] | None = None) -> Any:
        options = parse_options(location, (params or {}).get("OPTIONS"))
        if options.errors:
            message = "; ".join(f"{p.msg} ({p.id})" for p in options.errors)
            return MisconfiguredCache(message, params or {})
        instance = super().__new__(cls)
        instance.options = options
        return instance

    def __init__(self, location: Any, params: dict[str, Any]) -> None:
        self._state: ProcessState = state_for(self.options)
        super().__init__(params)
        self._l1 = self._state.store
        self._stats = self._state.stats
        signing_key, fallback_keys = _signing_keys(self.options)
        self._serializer = Serializer(
            signing_key=signing_key,
            fallback_keys=fallback_keys,
            pickle_fallback=self.options.pickle_fallback,
            compress_min_bytes=self.options.compress_min_bytes,
        )

    @property
    def _l2(self) -> Any:
        """The Redis tier of this process (None in L1-only mode)."""
        return self._state.l2

    # -- keys -------------------------------------------------------------------
    # The key memo depends on how keys are made, so assigning any of these
    # (BaseCache.__init__ does, and so do tests and users) picks the memo that
    # belongs to the new combination; the hot path never re-checks them.
    # Three properties written out, deliberately, not made by a factory: each
    # keeps its own type for mypy and reads as plain attribute access.
    @property
    def key_func(self) -> Any:
        return self._key_func

    @key_func.setter
    def key_func(self, func: Any) -> None:
        self._key_func = func
        self._select_memo()

    @property
    def key_prefix(self) -> str:
        return self._key_prefix

    @key_prefix.setter
    def key_prefix(self, prefix: str) -> None:
        self._key_prefix = prefix
        self._select_memo()

    @property
    def version(self) -> int:
        return self._version

    @version.setter
    def version(self, version: int) -> None:
        self._version = version
        self._select_memo()

    def _select_memo(self) -> None:
        parts = (getattr(self, "_key_prefix", None), getattr(self, "_version", None), getattr(self, "_key_func", None))
        memos = self._state.key_memos
        if parts not in memos and len(memos) >= KEY_MEMOS_LIMIT:
            memos.clear()
        self._memo = memos.setdefault(parts, {})

    def _key(self, key: Any, version: int | None) -> tuple[str, DataTypeCounters]:
        """The final key and its data type's counters; warns like Django does."""
        if version is None and type(key) is str:
            entry = self._memo.get(key)
            if entry is not None:
                return entry
        full = self.make_key(key, version=version)
        if not full.isascii():
            full = _encodable_key(full)
        problems = _key_warnings(full)
        for problem in problems:
            warnings.warn(problem, CacheKeyWarning, stacklevel=1)  # Django's own stack level
        entry = (full, self._stats.for_key(key))
        if not problems and version is None and type(key) is str:
            if len(self._memo) >= KEY_MEMO_LIMIT:
                self._memo.clear()
            self._memo[key] = entry
        return entry

    # -- timeouts ---------------------------------------------------------------
    def _ttl(self, timeout: Any) -> float | None:
        """Seconds to live (None = forever); zero or less means "do not keep".

        As LocMemCache: ``inf`` (and any TTL past ``FOREVER_SECONDS``) keeps
        the value for ever, ``-inf`` deletes, and ``nan`` keeps it for ever
        too (LocMemCache's expiry test is ``expiry <= now``, never true for
        nan).
        """
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None:
            return None
        seconds = float(timeout)
        if seconds >= FOREVER_SECONDS or math.isnan(seconds):
            return None
        return seconds

    def _l1_expiry(self, seconds: float | None, now: float | None = None) -> float | None:
        """Monotonic expiry for L1, capped by MAX_AGE (``now``: the monotonic clock, read once per batch)."""
        max_age = self.options.l1_max_age
        if now is None:
            now = time.monotonic()
        if seconds is None:
            return None if max_age is None else now + max_age
        if max_age is not None and max_age < seconds:
            seconds = max_age
        return now + seconds

    # -- L2 guard ---------------------------------------------------------------
    def _l2_call(self, method: Callable[..., Any], *args: Any) -> Any:
        """Run one L2 call behind the breaker; any failure becomes L2Unavailable (``tiers.guard``)."""
        self._l2_admit()
        with L2Guard(self._state.breaker, self._stats, getattr(method, "__name__", str(method))):
            return method(*args)

    def _l2_admit(self) -> None:
        """Refuse an L2 call the breaker does not allow, or one that would read what held invalidations replace."""
        if not self._state.breaker.allow():
            raise L2Unavailable("circuit open")
        if self._state.holds_back() and not self._state.replay_pending():
            # Deliver what Redis missed (or wait for another thread's delivery)
            # before this call reads anything those invalidations replace; a
            # half-open probe too, or it would read the replaced values.
            raise L2Unavailable("invalidations held back by an outage could not be delivered")

    def _l2_read(self, method: Callable[..., Any], *args: Any) -> Any:
        """An L2 read whose answer is used only while this process trusts Redis to hold every returned write.

        Right after an outage it does not (``ProcessState.l2_reads_trusted``):
        another process may still hold a write it could not deliver, and Redis
        the value that write replaced. The call is still made (it may be the
        breaker's probe); its answer becomes a miss.
        """
        result = self._l2_call(method, *args)
        if self._l2_answer_distrusted():
            raise L2Unavailable("Redis just came back: its answers wait out the staleness bound")
        return result

    def _l2_answer_distrusted(self) -> bool:
        if self._state.l2_reads_trusted():
            return False
        next(self._stats.l2_distrusted)
        return True

    def _write_failed(self, fulls: list[str]) -> None:
        """Redis did not take a write: drop local copies, replay as deletes later (``ProcessState.hold_back``)."""
        self._state.hold_back(fulls, self.key_prefix)

    # -- L1 payloads ------------------------------------------------------------
    # An L1 payload is ``(reader, stored)``: the value is ``stored`` itself when
    # reader is None, else ``reader(stored)`` - a cheap copy or a decode (see
    # tiers.copying). Every get returns an object no other caller holds.
    def _payload(self, value: Any, encoded: tuple[int, bytes] | None = None) -> tuple[tuple[Reader, Any], int]:
        """The L1 payload for a value and its weight in bytes."""
        try:
            reader, size = plan_copy(value)
            return (reader, value if reader is None else reader(value)), size
        except NotPlannable:
            codec, body = encoded or self._serializer.encode(value)
            return (self._serializer.reader_for(codec), body), sys.getsizeof(body)

    def _store_l1(self, full: str, value: Any, seconds: float | None, encoded: Any = None, ticket: int | None = None) -> bool:
        """Hold a value in L1 (when L1 is on and, with a ticket, nothing changed since)."""
        if self._l2 is not None and type(value) is int:
            return False  # counters live in Redis only
        payload, weight = self._l1_entry(full, value, encoded)
        return self._state.fill_l1(full, payload, weight, self._l1_expiry(seconds), ticket)

    def _l1_entry(self, full: str, value: Any, encoded: Any = None) -> tuple[tuple[Reader, Any], int]:
        """The L1 payload of a value and its weight, key and entry overhead included.

        With ``encoded`` (the body went to or came from Redis) the value is held
        as that body and planned on its first L1 read (``plan_on_first_read``):
        the walk a plan takes is most of an L2 hit's or a write's cost, and a
        value read once is never read from L1 at all.
        """
        if encoded is not None:  # a payload holding the body that replaces itself with a planned copy when first read
            codec, body = encoded
            reader = self._state.first_readers.get(codec) or self._first_reader(codec)
            return (reader, (full, body)), sys.getsizeof(body) + sys.getsizeof(full) + ENTRY_OVERHEAD
        payload, size = self._payload(value)
        return payload, size + sys.getsizeof(full) + ENTRY_OVERHEAD

    def _first_reader(self, codec: int) -> Reader:
        """The one ``plan_on_first_read`` reader for ``codec`` in this process's L1 (made on first need)."""
        readers = self._state.first_readers
        reader = readers.get(codec)
        if reader is None:
            store = self._l1

            def adopt(held: Any, reader: Reader, stored: Any, size: int) -> None:
                # Only in place of this very entry: a write or drop since then wins.
                full = held[0]
                with store.lock:
                    found = store.get_with_expiry(full)
                    if found is not None and found[0][1] is held:
                        store.set(full, (reader, stored), size + sys.getsizeof(full) + ENTRY_OVERHEAD, found[1])

            reader = readers[codec] = plan_on_first_read(self._serializer.reader_for(codec), adopt)
        return reader

    def _wire(self, full: str, value: Any, seconds: float | None, delta: float = 0.0) -> tuple[bytes | int, tuple[int, bytes] | None]:
        """The Redis value for ``full`` and, when one was made, the encoded body (reused for L1)."""
        expires_at = None if seconds is None else time.time() + seconds
        if type(value) is int:
            return self._serializer.dumps(value, expires_at, key=full), None
        encoded = self._serializer.encode(value, full)
        return self._serializer.frame(*encoded, expires_at, delta, key=full), encoded

    # -- reads ------------------------------------------------------------------
    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        # The memo lookup of _key, inlined: a function call is a fifth of a hit.
        entry = self._memo.get(key) if version is None and type(key) is str else None
        full, counters = entry if entry is not None else self._key(key, version)
        if not next(self._stats.l1_tick) & _L1_SAMPLE_MASK:
            return self._timed_get(full, counters, default)
        payload = self._l1.get(full)
        if payload is not MISSING:
            next(counters.l1_hits)
            reader, stored = payload
            return stored if reader is None else reader(stored)
        return self._get_from_l2(full, counters, default)

    def _timed_get(self, full: str, counters: DataTypeCounters, default: Any) -> Any:
        start = time.perf_counter()
        payload = self._l1.get(full)
        if payload is MISSING:
            return self._get_from_l2(full, counters, default)
        reader, stored = payload
        value = stored if reader is None else reader(stored)
        self._stats.latency["l1"].observe(time.perf_counter() - start)
        next(counters.l1_hits)
        return value

    def _get_from_l2(self, full: str, counters: DataTypeCounters, default: Any) -> Any:
        # A first read's Python work is a fifth of its time, and in a worker
        # (caches cold between requests) each call frame on the way costs
        # about a microsecond. So this is _l2_read(self._l2.get, full) written
        # out: the same admission, guard (guard.failed) and trust check, with
        # the breaker's success recorded directly rather than through L2Guard.
        state = self._state
        l2 = state.l2
        if l2 is None:
            next(counters.misses)
            return default
        ticket = state.writes.ticket()
        start = time.perf_counter()
        breaker = state.breaker
        try:
            if breaker.state != CLOSED or state.holds_back():
                self._l2_admit()  # breaker.allow() is True without side effects while it is closed
            try:
                data = l2.get(full)
            except BaseException as exc:
                guard.failed(breaker, self._stats, "get", exc)
                raise
            breaker.record_success()  # L2Guard's exit without an exception
            if self._l2_answer_distrusted():
                raise L2Unavailable("Redis just came back: its answers wait out the staleness bound")
        except L2Unavailable:
            next(counters.misses)
            return default
        self._stats.latency["l2"].observe(time.perf_counter() - start)
        found, value, retire = self._decode_from_l2(full, data, counters, ticket)
        if retire:
            self._retire_corrupt(full, data)
        return value if found else default

    def _accept_from_l2(self, full: str, data: bytes | None, counters: DataTypeCounters, ticket: int) -> tuple[bool, Any]:
        """Decode an L2 value, promote it into L1, count the outcome; retire it if corrupt."""
        found, value, retire = self._decode_from_l2(full, data, counters, ticket)
        if retire:
            self._retire_corrupt(full, data)
        return found, value

    def _retire_corrupt(self, full: str, data: Any) -> None:
        # Left in place it would make every add()/get_or_set() fail on this key.
        try:
            self._l2_call(self._l2.delete_if_equal, full, data)
        except L2Unavailable:
            pass

    def _decode_from_l2(self, full: str, data: bytes | None, counters: DataTypeCounters, ticket: int) -> tuple[bool, Any, bool]:
        """(found, value, retire it): the decode, promotion and counting of an L2 read, without I/O.

        Shared by the sync and the async reads; only the retirement of a
        corrupt entry talks to Redis, so the caller does it its own way.
        The value is held in L1 as its body (``_l1_entry``), planned on its first L1 read.
        """
        frame, value, retire = self._verified(full, data, counters)
        if frame is None:
            return False, None, retire
        if frame.codec == OBJECT or type(value) is int:  # raw integers and counters stay in Redis only (_store_l1)
            return True, value, False
        expires_at = frame.expires_at
        seconds = None if expires_at is None else expires_at - time.time()
        if seconds is not None and seconds <= 0:
            return True, value, False
        try:
            payload, weight = self._l1_entry(full, value, (frame.codec, frame.body))
            stored = self._state.fill_l1(full, payload, weight, self._l1_expiry(seconds), ticket)
        except Exception as exc:  # a read never raises for what L1 cannot hold; L2 still serves it
            logger.warning("velro_cache: not promoting %r into L1: %s", full, describe(exc))
            return True, value, False
        if stored:
            self._state.remember_load(full, frame.delta, expires_at)
        return True, value, False

    def _verified(self, full: str, data: bytes | None, counters: DataTypeCounters) -> tuple[Any, Any, bool]:
        """(frame, value, retire it) of bytes read from L2, counted; frame None: a miss."""
        if data is None:
            next(counters.misses)
            return None, None, False
        try:
            frame = self._serializer.unframe(data, key=full)
            value = self._serializer.decode(frame.codec, frame.body)
        except UnverifiedEntry as exc:
            # Not ours to judge: another deployment's, the other side of a key
            # rotation, or forged. A miss, and left where it is.
            next(counters.corrupt)
            next(counters.misses)
            logger.warning("velro_cache: ignoring an unverified L2 entry at %r: %s", full, exc)
            return None, None, False
        except CorruptEntry as exc:
            next(counters.corrupt)
            next(counters.misses)
            logger.warning("velro_cache: retiring a corrupt L2 entry at %r: %s", full, exc)
            return None, None, True
        next(counters.l2_hits)
        return frame, value, False

    def _decode_many_from_l2(
        self, pending: list[tuple[Any, str, DataTypeCounters]], datas: list[bytes | None], ticket: int
    ) -> tuple[dict[Any, Any], list[tuple[str, bytes]]]:
        """The values of a batch read from L2, promoted together; and the corrupt entries to retire.

        What ``_decode_from_l2`` does per key, with the promotion done once for
        the batch (``ProcessState.fill_l1_many``: one lock, one eviction pass)
        and the clock read once: per-key Python work was most of a
        ``get_many``'s cost. Shared by ``get_many`` and ``aget_many``.
        """
        found: dict[Any, Any] = {}
        retire: list[tuple[str, bytes]] = []
        promote: list[tuple[str, Any, int, float | None]] = []
        loads: dict[str, tuple[float, float | None]] = {}
        now, monotonic = time.time(), time.monotonic()
        for (key, full, counters), data in zip(pending, datas):
            frame, value, corrupt = self._verified(full, data, counters)
            if frame is None:
                if corrupt and data is not None:
                    retire.append((full, data))
                continue
            found[key] = value
            if frame.codec == OBJECT or type(value) is int:  # counters live in Redis only
                continue
            expires_at = frame.expires_at
            if expires_at is not None and expires_at <= now:
                continue
            payload, weight = self._l1_entry(full, value, (frame.codec, frame.body))
            promote.append((full, payload, weight, self._l1_expiry(None if expires_at is None else expires_at - now, monotonic)))
            if frame.delta > 0:
                loads[full] = (frame.delta, expires_at)
        if promote:
            try:
                stored = self._state.fill_l1_many(promote, ticket)
            except Exception as exc:  # a read never raises for what L1 cannot hold; L2 still serves it
                logger.warning("velro_cache: not promoting %d values into L1: %s", len(promote), describe(exc))
                stored = []
            for full in stored:
                if full in loads:
                    self._state.remember_load(full, *loads[full])
        return found, retire

    def get_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        found, pending = self._get_many_from_l1(keys, version)
        if pending:
            found.update(self._get_many_from_l2(pending))
        return found

    def _get_many_from_l1(self, keys: Iterable[Any], version: int | None) -> tuple[dict[Any, Any], list[tuple[Any, str, DataTypeCounters]]]:
        """The L1 hits (counted), and the keys L2 must answer: shared by ``get_many`` and ``aget_many``."""
        found: dict[Any, Any] = {}
        pending: list[tuple[Any, str, DataTypeCounters]] = []
        for key in keys:
            full, counters = self._key(key, version)
            payload = self._l1.get(full)
            if payload is MISSING:
                pending.append((key, full, counters))
            else:
                next(counters.l1_hits)
                reader, stored = payload
                found[key] = stored if reader is None else reader(stored)
        return found, pending

    def _get_many_from_l2(self, pending: list[tuple[Any, str, DataTypeCounters]]) -> dict[Any, Any]:
        datas: list[bytes | None] = [None] * len(pending)
        ticket = self._state.writes.ticket()
        if self._l2 is not None:
            start = time.perf_counter()
            try:
                datas = self._l2_read(self._l2.get_many, [full for _, full, _ in pending])
                self._stats.latency["l2"].observe(time.perf_counter() - start)
            except L2Unavailable:
                pass
        found, retire = self._decode_many_from_l2(pending, datas, ticket)
        for full, data in retire:
            # Left in place it would make every add()/get_or_set() fail on this key.
            try:
                self._l2_call(self._l2.delete_if_equal, full, data)
            except L2Unavailable:
                pass
        return found

    def fetch_authoritative(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        """Read keys from the tier every process agrees on, bypassing this process's L1.

        That is L2 when there is one (L1 alone in L1-only mode, where one
        process is the whole truth). For checks that must never trust an L1
        copy, such as authorization versions read once per request. Raises
        ``L2Unavailable`` when Redis cannot answer: "absent" and "unknown"
        must not look the same to such a caller.
        """
        pairs = [(key, *self._key(key, version)) for key in keys]
        if self._l2 is None:
            found = {}
            for key, full, _ in pairs:
                payload = self._l1.get(full)
                if payload is not MISSING:
                    reader, stored = payload
                    found[key] = stored if reader is None else reader(stored)
            return found
        datas = self._l2_read(self._l2.get_many, [full for _, full, _ in pairs])
        found = {}
        for (key, full, counters), data in zip(pairs, datas):
            if data is None:
                continue
            try:
                frame = self._serializer.unframe(data, key=full)
                found[key] = self._serializer.decode(frame.codec, frame.body)
            except CorruptEntry:
                next(counters.corrupt)
        return found

    def has_key(self, key: Any, version: int | None = None) -> bool:
        full, _ = self._key(key, version)
        if full in self._l1:
            return True
        if self._l2 is None:
            return False
        try:
            data = self._l2_read(self._l2.get, full)
        except L2Unavailable:
            return False
        # What get would say: bytes this deployment cannot verify are a miss, not a key.
        return data is not None and self._verifies(full, data)

    def _verifies(self, full: str, data: bytes) -> bool:
        try:
            self._serializer.unframe(data, key=full)
        except CorruptEntry:
            return False
        return True

    # -- writes -----------------------------------------------------------------
    def set(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None, nx: bool = False) -> Any:
        if nx:  # django-redis's SET NX: add's answer
            return self.add(key, value, timeout, version)
        full, _ = self._key(key, version)
        if not self._set_many_full([(full, value)], self._ttl(timeout)):
            logger.warning("velro_cache: %r was not cached: larger than the L1 budget", full)

    def set_many(self, data: dict[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> list[Any]:
        seconds = self._ttl(timeout)
        by_full = {self._key(key, version)[0]: key for key in data}
        stored = self._set_many_full([(full, data[key]) for full, key in by_full.items()], seconds, report=True)
        return [] if stored is True else [by_full[full] for full in stored]

    def _set_many_full(self, items: list[tuple[str, Any]], seconds: float | None, report: bool = False) -> Any:
        """Write through both tiers.

        Returns True, or with ``report`` the keys no tier kept (L1-only mode
        and an oversize value); without ``report``, False when nothing kept it.
        """
        for _ in items:
            next(self._stats.sets)
        if seconds is not None and seconds <= 0:
            self._delete_full([full for full, _ in items])
            return True
        if self._l2 is None:
            # Every payload made before anything changes: a value that cannot
            # be held (too deep even for pickle) leaves the old one in place.
            entries = [(full, *self._l1_entry(full, value)) for full, value in items]
            self._state.forget_local([full for full, _ in items])  # voids in-flight fills' tickets
            expiry = self._l1_expiry(seconds)
            rejected = [full for full, payload, weight in entries if not self._state.fill_l1(full, payload, weight, expiry, None)]
            return rejected if report else not rejected
        wires = [self._wire(full, value, seconds) for full, value in items]
        fulls = [full for full, _ in items]
        ticket = self._state.begin_write(fulls)
        try:
            self._l2_call(
                self._l2.set_many, [(full, wire[0]) for full, wire in zip(fulls, wires)], seconds, self._state.drop_message(fulls)
            )
        except L2Unavailable:
            self._write_failed(fulls)
            return True
        self._settle_many(items, [wire[1] for wire in wires], seconds, ticket)
        return [] if report else True

    def _settle(self, full: str, value: Any, seconds: float | None, encoded: Any, ticket: int) -> None:
        """After a write reached Redis: hold it in L1 unless the key changed meanwhile."""
        self._settle_many([(full, value)], [encoded], seconds, ticket)

    def _settle_many(self, items: list[tuple[str, Any]], encoded: list[Any], seconds: float | None, ticket: int) -> None:
        """``_settle`` of a batch written together (set_many): one L1 admission (``ProcessState.settle_writes``)."""
        expiry = self._l1_expiry(seconds)
        entries: list[tuple[str, Any, int, float | None]] = []
        for (full, value), body in zip(items, encoded):
            if type(value) is int:  # counters live in Redis only
                entries.append((full, None, 0, None))
            else:
                payload, weight = self._l1_entry(full, value, body)
                entries.append((full, payload, weight, expiry))
        self._state.settle_writes(entries, ticket)

    def add(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        full, _ = self._key(key, version)
        seconds = self._ttl(timeout)
        keep = seconds is None or seconds > 0
        if self._l2 is None:
            with self._l1.lock:
                if full in self._l1:
                    return False
                self._state.writes.note([full])
                if keep:
                    self._store_l1(full, value, seconds)
                return True
        data, encoded = self._wire(full, value, seconds)
        ticket = self._state.begin_write([full])
        try:
            added = self._add_l2(full, data, seconds if keep else 0.001)
        except L2Unavailable:
            self._write_failed([full])
            return False
        if not added:
            return False
        if not keep:
            self._delete_full([full])
        else:
            self._settle(full, value, seconds, encoded, ticket)
        return True

    def get_or_add(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> Any:
        """The value cached under ``key``; when there is none, ``value``, added as ``add`` adds it.

        One round trip whether or not Redis holds the key (none on an L1 hit):
        the add's script answers a refused SET NX with the bytes in the way,
        which are read as a ``get`` would read them. For values made before
        the call, any of which serves as well as another (a new namespace
        token): nothing is loaded and no lease is taken, so two processes
        adding at once both get the one Redis kept. With Redis unavailable it
        returns ``value`` unstored, as a ``get`` miss followed by a failed
        ``add`` would leave the caller with it.
        """
        full, counters = self._key(key, version)
        found = self.local_value(full, counters)
        if found is not MISSING:
            return found
        if self._l2 is None:
            return value if self.add(key, value, timeout, version) else self.get(key, value, version)
        seconds = self._ttl(timeout)
        if seconds is not None and seconds <= 0:
            return value  # add() would store nothing either
        data, encoded = self._wire(full, value, seconds)
        ticket = self._state.begin_write([full])
        try:
            added, existing = self._add_l2_or_existing(full, data, seconds)
        except L2Unavailable:
            self._write_failed([full])
            next(counters.misses)
            return value
        return self._added_or_kept(full, value, seconds, encoded, ticket, counters, added, existing)

    def _added_or_kept(
        self, full: str, value: Any, seconds: float | None, encoded: Any, ticket: int, counters: DataTypeCounters,
        added: bool, existing: bytes | None,
    ) -> Any:
        """What ``get_or_add`` returns once the add answered (no I/O, shared with ``aget_or_add``).

        Ours when it went in (held in L1 unless the key changed meanwhile);
        else the value in the way, read as a ``get`` reads it (its bytes were
        verified readable, so there is nothing corrupt to retire).
        """
        if added or existing is None:
            next(counters.misses)
            if added:
                self._settle(full, value, seconds, encoded, ticket)
            return value
        found, kept, _ = self._decode_from_l2(full, existing, counters, ticket)
        return kept if found else value

    def _add_l2(self, full: str, data: bytes | int, seconds: float | None) -> bool:
        """SET NX in Redis, announced (other processes drop any L1 copy they kept)."""
        return self._add_l2_or_existing(full, data, seconds)[0]

    def _add_l2_or_existing(self, full: str, data: bytes | int, seconds: float | None) -> tuple[bool, bytes | None]:
        """``_add_l2``, and when Redis kept another value, its bytes: (added, the readable bytes in the way or None).

        Bytes in the way that this deployment cannot verify are a miss to it
        (``get`` says so), so add takes their place as it would on any miss,
        unless they changed meanwhile.
        """
        message = self._state.drop_message([full])
        added, in_the_way = self._l2_call(self._l2.add, full, data, seconds, message)
        if added or in_the_way is None:
            return added, None
        if self._readable(full, in_the_way):
            return False, in_the_way
        px = ttl_ms(seconds)
        return self._l2_call(self._l2.replace_if_equal, full, in_the_way, data, -1 if px is None else px, message), None

    def _readable(self, full: str, data: bytes) -> bool:
        """Whether ``get`` would serve these bytes (rather than count a miss)."""
        try:
            frame = self._serializer.unframe(data, key=full)
            self._serializer.decode(frame.codec, frame.body)
        except CorruptEntry:
            return False
        return True

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        full, _ = self._key(key, version)
        seconds = self._ttl(timeout)
        if seconds is not None and seconds <= 0:
            return self._delete_full([full]) > 0
        if self._l2 is None:
            return self._l1.touch(full, self._l1_expiry(seconds))
        try:
            touched = self._touch_l2(full, seconds)
        except L2Unavailable:
            self._write_failed([full])
            return False
        self._state.forget_local([full])  # re-promoted with the new expiry on the next read
        return touched

    def _touch_l2(self, full: str, seconds: float | None) -> bool:
        """Give the key a new TTL and its frame the same expiry, re-signed.

        The expiry is inside the MAC, so Redis cannot rewrite it alone: read,
        re-sign, then replace only if unchanged. A write in between wins and
        the touch still counts (it took effect just before that write).
        """
        data, _ = self._l2_call(self._l2.value_and_pttl, full)
        if type(data) is int:  # a set, hash or sorted set (redis_collections): no frame to re-sign
            return self._l2_call(self._l2.retime, full, seconds)
        if data is None:
            return False
        try:
            frame = self._serializer.unframe(data, key=full)
        except CorruptEntry:
            return False  # nothing this deployment can read: a miss, left alone
        expires_at = None if seconds is None else time.time() + seconds
        new = b"" if frame.codec == OBJECT else self._serializer.frame(frame.codec, frame.body, expires_at, frame.delta, key=full)
        px = ttl_ms(seconds)
        self._l2_call(self._l2.replace_if_equal, full, data, new, -1 if px is None else px, self._state.drop_message([full]))
        return True

    def delete(self, key: Any, version: int | None = None) -> bool:
        full, _ = self._key(key, version)
        return self._delete_full([full]) > 0

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        self._delete_full([self._key(key, version)[0] for key in keys])

    def _delete_full(self, fulls: list[str]) -> int:
        """Delete from both tiers; the number of keys that existed (L2 decides)."""
        next(self._stats.deletes)
        if not fulls:
            return 0
        if self._l2 is None:
            with self._l1.lock:
                existed = sum(full in self._l1 for full in fulls)
                self._state.forget_local(fulls)
            return existed
        try:
            existed = self._l2_call(self._l2.delete_many, fulls, self._state.drop_message(fulls))
        except L2Unavailable:
            self._write_failed(fulls)
            return 0
        self._state.forget_local(fulls)
        return existed

    def incr(self, key: Any, delta: int = 1, version: int | None = None, ignore_key_check: bool = False) -> int:
        if ignore_key_check:  # django-redis's: a missing key starts at delta
            return self._incr_or_create(key, delta, version)
        full, _ = self._key(key, version)
        if self._l2 is not None:
            try:
                value = self._l2_call(self._l2.incr, full, delta)
                if value is NotACounter:
                    value = self._incr_on_client(full, delta)
            except L2Unavailable:
                # Without Redis the counter's value is unknown; the contract has
                # no "unavailable", and ValueError is what a missing key gives.
                raise ValueError(f"Key '{key}' not found (Redis unavailable)") from None
            if value is None:
                raise ValueError(f"Key '{key}' not found")
            return value
        with self._l1.lock:
            found = self._l1.get_with_expiry(full)
            if found is None:
                raise ValueError(f"Key '{key}' not found")
            (reader, stored), expires_at = found
            new_value = (stored if reader is None else reader(stored)) + delta
            self._state.writes.note([full])
            payload, size = self._payload(new_value)
            self._l1.set(full, payload, size + sys.getsizeof(full) + ENTRY_OVERHEAD, expires_at)
            return new_value

    def _added(self, full: str, data: bytes | None, pttl: int, delta: int) -> tuple[Any, bytes] | None:
        """``incr``'s new value and its frame, keeping the old expiry (sync and async); None: nothing readable there."""
        if data is None:
            return None
        try:
            frame = self._serializer.unframe(data, key=full)
            old = self._serializer.decode(frame.codec, frame.body)
        except CorruptEntry:
            return None
        new = old + delta
        expires_at = frame.expires_at or (time.time() + pttl / 1000 if pttl > 0 else None)
        return new, self._serializer.dumps(new, expires_at, key=full)

    def _incr_on_client(self, full: str, delta: int) -> Any:
        """incr where INCRBY cannot: past 64 bits, or on a value that is not a raw integer.

        LocMemCache adds with Python's ``+`` (unbounded integers; a float or
        Decimal grows too; a str raises TypeError); so does this, then writes
        back with a compare-and-set that keeps the TTL. None: no such key (or
        nothing this deployment can read there, a miss to it).
        """
        for _ in range(INCR_ATTEMPTS):
            data, pttl = self._l2_call(self._l2.get_with_ttl, full)
            added = self._added(full, data, pttl, delta)
            if added is None:
                return None
            new, wire = added
            ticket = self._state.begin_write([full])
            if self._l2_call(self._l2.replace_if_equal, full, data, wire, -2, self._state.drop_message([full])):
                self._state.settle_write(full, None, 0, None, ticket)
                return new
            self._state.settle_write(full, None, 0, None, ticket)
        raise L2Unavailable(f"incr of {full!r} lost {INCR_ATTEMPTS} races in a row")

    def clear(self) -> None:
        if self._l2 is not None:
            try:
                self._l2_call(self._l2.clear, self.key_prefix, self._state.clear_message(self.key_prefix))
            except L2Unavailable:
                self._state.hold_back_clear(self.key_prefix)
        self._state.forget_all_local()

    # -- read-through -----------------------------------------------------------
    def get_or_load(self, key: Any, loader: Callable[[], Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> Any:
        """The cached value, or ``loader()``'s result, stored and returned (see ``velro_cache.fill``).

        Unlike Django's ``get_or_set``, a result of ``None`` is cached as well.
        ``timeout`` may be a callable, called only when a value is stored.
        """
        return fill.get_or_load(self, key, loader, timeout, version)

    def get_or_load_tracked(self, key: Any, loader: Callable[[], Any], timeout: Any, tracking: fill.Tracking) -> Any:
        """``get_or_load`` whose stored value joins ``tracking()``'s member sets in the store's round trip (``reads.cached_read``)."""
        return fill.get_or_load(self, key, loader, timeout, None, tracking)

    def get_or_set(self, key: Any, default: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> Any:
        """Django's get_or_set, with single flight and race-free fills."""
        loader = default if callable(default) else (lambda: default)
        return fill.get_or_load(self, key, loader, timeout, version)

    # -- the fill interface (velro_cache.fill.Fillable) -------------------------
    # The tier operations read-through needs, so the mechanism never reaches
    # into this class's private state nor guesses what a physical key looks like.
    @property
    def has_l2(self) -> bool:
        return self._l2 is not None

    def fill_key(self, key: Any, version: int | None) -> tuple[str, DataTypeCounters]:
        """The physical key and the counters of the logical key's data type."""
        return self._key(key, version)

    def key_lock(self, full: str) -> AbstractContextManager[None]:
        return self._state.flights.lock_for(full)

    def write_ticket(self) -> int:
        return self._state.writes.ticket()

    def seconds_for(self, timeout: Any) -> float | None:
        return self._ttl(timeout)

    def local_value(self, full: str, counters: DataTypeCounters) -> Any:
        payload = self._l1.get(full)
        if payload is MISSING:
            return MISSING
        next(counters.l1_hits)
        reader, stored = payload
        return stored if reader is None else reader(stored)

    def value_or_lease(self, full: str, counters: DataTypeCounters, ticket: int) -> tuple[Any, str | None]:
        """L2's value (decoded, promoted, counted like ``get``'s), else MISSING and our lease when we took it."""
        if self._l2 is None:
            next(counters.misses)
            return MISSING, None
        token = uuid.uuid4().hex
        start = time.perf_counter()
        try:
            data, taken = self._l2_call(self._l2.value_or_lease, full, token, self.options.lease_timeout)
        except L2Unavailable:
            next(counters.misses)
            return MISSING, None
        self._stats.latency["l2"].observe(time.perf_counter() - start)
        answer = self._miss_or_lease(data, taken, token, data is not None and self._l2_answer_distrusted(), counters)
        if answer is not None:
            return answer
        found, value = self._accept_from_l2(full, data, counters, ticket)
        if found:
            return value, None
        return MISSING, self.take_fill_lease(full)  # bytes we cannot read: a miss we may fill

    @staticmethod
    def _miss_or_lease(
        data: bytes | None, taken: bool, token: str, distrusted: bool, counters: DataTypeCounters
    ) -> tuple[Any, str | None] | None:
        """``value_or_lease``'s answer when L2's bytes are not to be read (counted as a miss), else None.

        No bytes: a miss, with our lease when the script took it. Bytes while
        Redis's answers are distrusted: not served, and no lease either, so
        the caller waits for or takes one as after any miss. Shared with
        ``avalue_or_lease``, which differs only by awaiting its I/O.
        """
        if data is None:
            next(counters.misses)
            return MISSING, token if taken else None
        if distrusted:
            next(counters.misses)
            return MISSING, None
        return None

    def take_fill_lease(self, full: str) -> str | None:
        token = uuid.uuid4().hex
        try:
            return token if self._l2_call(self._l2.acquire_lease, full, token, self.options.lease_timeout) else None
        except L2Unavailable:
            return None

    def release_fill_lease(self, full: str, token: str) -> None:
        try:
            self._l2_call(self._l2.release_lease, full, token)
        except L2Unavailable:
            pass

    def l2_trusted(self) -> bool:
        return self._state.breaker.state == CLOSED

    def peek_fill(self, full: str, counters: DataTypeCounters, ticket: int) -> tuple[bool, Any, bool]:
        data, leased = self._l2_call(self._l2.peek_fill, full)
        if data is not None and self._l2_answer_distrusted():
            data = None  # a miss, but the lease taken stands: this caller fills
        if data is None:
            return False, None, leased
        found, value = self._accept_from_l2(full, data, counters, ticket)
        return found, value, leased

    def store_fill(
        self, full: str, value: Any, seconds: float | None, delta: float, token: str | None, ticket: int, members: fill.Members = ()
    ) -> None:
        expires_at = None if seconds is None else time.time() + seconds
        if self._l2 is None:
            if self._store_l1(full, value, seconds, ticket=ticket):
                self._state.remember_load(full, delta, expires_at)
            return
        data, encoded = self._wire(full, value, seconds, delta)
        try:
            stored = self._l2_call(self._l2.store_if_leased, full, token, data, seconds, self._state.drop_message([full]), members)
        except L2Unavailable:
            return
        if stored:
            self._state.remember_load(full, delta, expires_at)
            self._store_l1(full, value, seconds, encoded, ticket)

    def load_record(self, full: str) -> tuple[float, float | None] | None:
        return self._state.loaded.get(full)

    # -- observability ----------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """A snapshot of this process's counters, latency, L1 occupancy and L2 health."""
        state = self._state
        snapshot = state.stats.snapshot()
        snapshot["l1"] = {
            "enabled": state.l1_enabled,
            "bytes": self._l1.weighted_size,
            "max_bytes": self._l1.max_bytes,
            "entries": len(self._l1),
            "evictions": self._l1.evictions,
        }
        snapshot["l2"] = {
            "enabled": self._l2 is not None,
            "url": self._l2.url if self._l2 else None,
            "breaker": state.breaker.snapshot(),
            "pending_invalidations": len(state.pending),
            "coherence": {
                "connected": bool(state.listener and state.listener.connected),
                "messages_applied": state.listener.messages_applied if state.listener else 0,
                "losses": state.listener.losses if state.listener else 0,
            },
        }
        return snapshot


__all__ = ["TieredCache", "UnserializableValue", "L2Unavailable"]
