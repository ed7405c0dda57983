"""TieredCache's async API: every ``a*`` method native, none a thread hop to its sync twin.

Django's ``BaseCache`` makes each async method a ``sync_to_async`` wrapper:
a worker thread per call (about 500 us), and ``aget_or_set`` without any
single flight. Here each one is a coroutine with the sync method's semantics,
built from the same parts:

* the pure steps are the sync path's own methods: key making and its memo,
  TTLs, frames and the serializer (``_wire``), L1 bookkeeping (write tickets,
  ``begin_write``/``_settle``, holding back a failed write), decoding and promotion
  (``_decode_from_l2``), the stats;
* an L2 call is awaited on ``tiers.aredis`` (``redis.asyncio``, one client per
  event loop; on a Redis Cluster ``tiers.acluster``), behind the same breaker
  and failure rules (``tiers.guard``), and a write announces itself as the sync
  one does, so other processes hear an ``aset`` exactly as they hear a ``set``;
  on a cluster a failed write's hold announcement is awaited there too;
* in L1-only mode nothing waits on I/O, so the sync method itself runs.

Two rare recovery steps still run in a worker thread, because they block by
design and are shared with the sync path: delivering invalidations an outage
held back, and re-confirming a Redis whose coherence pings lapsed. Every L2
(one Redis, Sentinel, a Cluster) is awaited on the loop itself.

``aget_or_set`` and ``aget_or_load`` are single-flight (``velro_cache.afill``).

Written twice, deliberately: the few lines of control flow around an awaited
call (``_aget_from_l2`` is ``backends._get_from_l2`` with ``await``, and so
on). A coroutine cannot reuse a sync body that blocks on I/O, and routing the
sync path through a coroutine would cost the L1 hit path; so only the steps
between I/O are shared, and ``tests/test_async.py`` holds the two to one
contract.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, cast

from asgiref.sync import sync_to_async
from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.exceptions import SynchronousOnlyOperation

from . import afill
from .exceptions import CorruptEntry, L2Unavailable
from .options import TieredOptions
from .serializers import OBJECT, Serializer
from .stats import L1_SAMPLE, CacheStats, DataTypeCounters
from .tiers import aredis
from .tiers.breaker import CLOSED
from .tiers.guard import L2Guard
from .tiers.memory import MISSING, MemoryStore
from .tiers.process import ProcessState
from .tiers.redis import NotACounter, ttl_ms

logger = logging.getLogger("velro_cache")

_L1_SAMPLE_MASK = L1_SAMPLE - 1
INCR_ATTEMPTS = 16  # as TieredCache's incr past 64 bits


class AsyncTieredMixin:
    """The ``a*`` methods of TieredCache; everything they share with the sync path lives there."""

    # Provided by TieredCache (declared for the type checker).
    options: TieredOptions
    _state: ProcessState
    _stats: CacheStats
    _l1: MemoryStore
    _serializer: Serializer
    _memo: dict
    _l2: Any
    key_prefix: Any
    _key: Any
    _ttl: Any
    _wire: Any
    _settle: Any
    _settle_many: Any
    _miss_or_lease: Any
    _decode_from_l2: Any
    _decode_many_from_l2: Any
    _readable: Any
    _verifies: Any
    _l2_answer_distrusted: Any
    _store_l1: Any
    _set_many_full: Any
    _delete_full: Any
    _get_many_from_l1: Any
    _added: Any
    get: Any
    add: Any
    get_or_add: Any
    local_value: Any
    _added_or_kept: Any
    touch: Any
    incr: Any
    clear: Any
    get_many: Any
    has_key: Any

    # -- the L2 call --------------------------------------------------------------------
    async def _al2_call(self, name: str, *args: Any) -> Any:
        """Await one call of the loop's async tier, behind the breaker (as ``_l2_call``)."""
        state = self._state
        if not state.breaker.allow():
            raise L2Unavailable("circuit open")
        if state.holds_back() and not await sync_to_async(state.replay_pending, thread_sensitive=False)():
            raise L2Unavailable("invalidations held back by an outage could not be delivered")
        method = getattr(aredis.tier_for(self._l2, self.options), name)
        with L2Guard(state.breaker, self._stats, name):
            return await method(*args)

    async def _al2_read(self, name: str, *args: Any) -> Any:
        """As ``_l2_read``: the answer is a miss while Redis's answers are not trusted yet."""
        result = await self._al2_call(name, *args)
        if await self._al2_answer_distrusted():
            raise L2Unavailable("Redis just came back: its answers wait out the staleness bound")
        return result

    async def _al2_answer_distrusted(self) -> bool:
        """``_l2_answer_distrusted`` without blocking the loop in the common case.

        The quick test is ``ProcessState.l2_reads_trusted``'s own first half,
        both ways: an open breaker or the window after an outage distrusts at
        once, recent confirmations trust at once. Only when the coherence pings
        lapsed (that method then waits up to the staleness bound for a fresh
        one) does the check go to a thread.
        """
        state = self._state
        now = time.monotonic()
        if state.breaker.state != CLOSED or now < state.l2_distrusted_until:
            next(self._stats.l2_distrusted)
            return True
        heard = state.heard
        if heard == 0.0 or now - heard <= state.options.staleness_bound:
            return False
        return await sync_to_async(self._l2_answer_distrusted, thread_sensitive=False)()

    async def _awrite_failed(self, fulls: list[str]) -> None:
        """As ``_write_failed``; on a cluster the hold is announced on the loop's async tier, not by a blocking call."""
        await self._aannounce_held(self._state.hold_back_unannounced(fulls, self.key_prefix))

    async def _aannounce_held(self, message: bytes | None) -> None:
        if message is not None:
            self._state.held_announced(await aredis.tier_for(self._l2, self.options).announce_held(message))

    # -- reads --------------------------------------------------------------------------
    async def aget(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        entry = self._memo.get(key) if version is None and type(key) is str else None
        full, counters = entry if entry is not None else self._key(key, version)
        sampled = not next(self._stats.l1_tick) & _L1_SAMPLE_MASK
        start = time.perf_counter() if sampled else 0.0
        payload = self._l1.get(full)
        if payload is MISSING:
            return await self._aget_from_l2(full, counters, default)
        reader, stored = payload
        value = stored if reader is None else reader(stored)
        if sampled:
            self._stats.latency["l1"].observe(time.perf_counter() - start)
        next(counters.l1_hits)
        return value

    async def _aget_from_l2(self, full: str, counters: DataTypeCounters, default: Any) -> Any:
        if self._l2 is None:
            next(counters.misses)
            return default
        ticket = self._state.writes.ticket()
        start = time.perf_counter()
        try:
            data = await self._al2_read("get", full)
        except L2Unavailable:
            next(counters.misses)
            return default
        self._stats.latency["l2"].observe(time.perf_counter() - start)
        found, value = await self._aaccept_from_l2(full, data, counters, ticket)
        return value if found else default

    async def _aaccept_from_l2(self, full: str, data: bytes | None, counters: DataTypeCounters, ticket: int) -> tuple[bool, Any]:
        found, value, retire = self._decode_from_l2(full, data, counters, ticket)
        if retire:
            try:
                await self._al2_call("delete_if_equal", full, data)
            except L2Unavailable:
                pass
        return found, value

    async def aget_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        if self._l2 is None:
            return self.get_many(keys, version)
        found, pending = self._get_many_from_l1(keys, version)
        if not pending:
            return found
        ticket = self._state.writes.ticket()
        start = time.perf_counter()
        try:
            datas = await self._al2_read("get_many", [full for _, full, _ in pending])
        except L2Unavailable:
            datas = [None] * len(pending)
        else:
            self._stats.latency["l2"].observe(time.perf_counter() - start)
        values, retire = self._decode_many_from_l2(pending, datas, ticket)
        found.update(values)
        for full, data in retire:
            try:
                await self._al2_call("delete_if_equal", full, data)
            except L2Unavailable:
                pass
        return found

    async def ahas_key(self, key: Any, version: int | None = None) -> bool:
        full, _ = self._key(key, version)
        if full in self._l1:
            return True
        if self._l2 is None:
            return False
        try:
            data = await self._al2_read("get", full)
        except L2Unavailable:
            return False
        return data is not None and self._verifies(full, data)

    # -- writes -------------------------------------------------------------------------
    async def _awires(self, items: list[tuple[str, Any]], seconds: float | None, delta: float = 0.0) -> list[Any]:
        """``_wire`` of each item; in a sync thread when encoding a value queries the database.

        Pickling an unevaluated QuerySet runs its query, which Django refuses
        on an event loop (SynchronousOnlyOperation). Django's own ``aset``
        would have run it in the request's sync thread, so this does too:
        only for such a value, and only for the encoding.
        """
        try:
            return [self._wire(full, value, seconds, delta) for full, value in items]
        except SynchronousOnlyOperation:
            return await sync_to_async(lambda: [self._wire(full, value, seconds, delta) for full, value in items])()

    async def aset(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> None:
        full, _ = self._key(key, version)
        if not await self._aset_many_full([(full, value)], self._ttl(timeout)):
            logger.warning("velro_cache: %r was not cached: larger than the L1 budget", full)

    async def aset_many(self, data: dict[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> list[Any]:
        seconds = self._ttl(timeout)
        by_full = {self._key(key, version)[0]: key for key in data}
        stored = await self._aset_many_full([(full, data[key]) for full, key in by_full.items()], seconds, report=True)
        return [] if stored is True else [by_full[full] for full in stored]

    async def _aset_many_full(self, items: list[tuple[str, Any]], seconds: float | None, report: bool = False) -> Any:
        """As ``_set_many_full``; returns what it returns."""
        if self._l2 is None:
            return self._set_many_full(items, seconds, report)
        for _ in items:
            next(self._stats.sets)
        fulls = [full for full, _ in items]
        if seconds is not None and seconds <= 0:
            await self._adelete_full(fulls)
            return True
        wires = await self._awires(items, seconds)
        ticket = self._state.begin_write(fulls)
        try:
            pairs = [(full, wire[0]) for full, wire in zip(fulls, wires)]
            await self._al2_call("set_many", pairs, seconds, self._state.drop_message(fulls))
        except L2Unavailable:
            await self._awrite_failed(fulls)
            return True
        self._settle_many(items, [wire[1] for wire in wires], seconds, ticket)
        return [] if report else True

    async def aadd(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        if self._l2 is None:
            return self.add(key, value, timeout, version)
        full, _ = self._key(key, version)
        seconds = self._ttl(timeout)
        keep = seconds is None or seconds > 0
        ((data, encoded),) = await self._awires([(full, value)], seconds)
        ticket = self._state.begin_write([full])
        try:
            added = await self._aadd_l2(full, data, seconds if keep else 0.001)
        except L2Unavailable:
            await self._awrite_failed([full])
            return False
        if not added:
            return False
        if not keep:
            await self._adelete_full([full])
        else:
            self._settle(full, value, seconds, encoded, ticket)
        return True

    async def aget_or_add(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> Any:
        """``get_or_add`` awaited: the cached value, else ``value`` added; one round trip either way."""
        full, counters = self._key(key, version)
        found = self.local_value(full, counters)
        if found is not MISSING:
            return found
        if self._l2 is None:
            return self.get_or_add(key, value, timeout, version)
        seconds = self._ttl(timeout)
        if seconds is not None and seconds <= 0:
            return value
        ((data, encoded),) = await self._awires([(full, value)], seconds)
        ticket = self._state.begin_write([full])
        try:
            added, existing = await self._aadd_l2_or_existing(full, data, seconds)
        except L2Unavailable:
            await self._awrite_failed([full])
            next(counters.misses)
            return value
        return self._added_or_kept(full, value, seconds, encoded, ticket, counters, added, existing)

    async def _aadd_l2(self, full: str, data: bytes | int, seconds: float | None) -> bool:
        """As ``_add_l2``: SET NX, announced."""
        return (await self._aadd_l2_or_existing(full, data, seconds))[0]

    async def _aadd_l2_or_existing(self, full: str, data: bytes | int, seconds: float | None) -> tuple[bool, bytes | None]:
        """As ``_add_l2_or_existing``: bytes in the way that do not verify are replaced, readable ones returned."""
        message = self._state.drop_message([full])
        added, in_the_way = await self._al2_call("add", full, data, seconds, message)
        if added or in_the_way is None:
            return added, None
        if self._readable(full, in_the_way):
            return False, in_the_way
        px = ttl_ms(seconds)
        return await self._al2_call("replace_if_equal", full, in_the_way, data, -1 if px is None else px, message), None

    async def atouch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        if self._l2 is None:
            return self.touch(key, timeout, version)
        full, _ = self._key(key, version)
        seconds = self._ttl(timeout)
        if seconds is not None and seconds <= 0:
            return await self._adelete_full([full]) > 0
        try:
            touched = await self._atouch_l2(full, seconds)
        except L2Unavailable:
            await self._awrite_failed([full])
            return False
        self._state.forget_local([full])  # re-promoted with the new expiry on the next read
        return touched

    async def _atouch_l2(self, full: str, seconds: float | None) -> bool:
        """As ``_touch_l2``: re-sign the frame with the new expiry, replace only if unchanged."""
        data, _ = await self._al2_call("value_and_pttl", full)
        if type(data) is int:  # a set, hash or sorted set (redis_collections): no frame to re-sign
            return await self._al2_call("retime", full, seconds)
        if data is None:
            return False
        try:
            frame = self._serializer.unframe(data, key=full)
        except CorruptEntry:
            return False
        expires_at = None if seconds is None else time.time() + seconds
        new = b"" if frame.codec == OBJECT else self._serializer.frame(frame.codec, frame.body, expires_at, frame.delta, key=full)
        px = ttl_ms(seconds)
        await self._al2_call("replace_if_equal", full, data, new, -1 if px is None else px, self._state.drop_message([full]))
        return True

    async def adelete(self, key: Any, version: int | None = None) -> bool:
        full, _ = self._key(key, version)
        return await self._adelete_full([full]) > 0

    async def adelete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        await self._adelete_full([self._key(key, version)[0] for key in keys])

    async def _adelete_full(self, fulls: list[str]) -> int:
        """As ``_delete_full``: both tiers, announced; the number of keys that existed."""
        if self._l2 is None or not fulls:
            return self._delete_full(fulls)
        next(self._stats.deletes)
        try:
            existed = await self._al2_call("delete_many", fulls, self._state.drop_message(fulls))
        except L2Unavailable:
            await self._awrite_failed(fulls)
            return 0
        self._state.forget_local(fulls)
        return existed

    async def aincr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        if self._l2 is None:
            return self.incr(key, delta, version)
        full, _ = self._key(key, version)
        try:
            value = await self._al2_call("incr", full, delta)
            if value is NotACounter:
                value = await self._aincr_on_client(full, delta)
        except L2Unavailable:
            raise ValueError(f"Key '{key}' not found (Redis unavailable)") from None
        if value is None:
            raise ValueError(f"Key '{key}' not found")
        return value

    async def adecr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        return await self.aincr(key, -delta, version)

    async def _aincr_on_client(self, full: str, delta: int) -> Any:
        """As ``_incr_on_client``: Python's ``+`` and a compare-and-set that keeps the TTL."""
        for _ in range(INCR_ATTEMPTS):
            data, pttl = await self._al2_call("get_with_ttl", full)
            added = self._added(full, data, pttl, delta)
            if added is None:
                return None
            new, wire = added
            ticket = self._state.begin_write([full])
            replaced = await self._al2_call("replace_if_equal", full, data, wire, -2, self._state.drop_message([full]))
            self._state.settle_write(full, None, 0, None, ticket)
            if replaced:
                return new
        raise L2Unavailable(f"incr of {full!r} lost {INCR_ATTEMPTS} races in a row")

    async def aclear(self) -> None:
        if self._l2 is None:
            return self.clear()
        try:
            await self._al2_call("clear", self.key_prefix, self._state.clear_message(self.key_prefix))
        except L2Unavailable:
            await self._aannounce_held(self._state.hold_back_clear_unannounced(self.key_prefix))
        self._state.forget_all_local()

    async def aclose(self, **kwargs: Any) -> None:
        """Nothing to release per request: the L1 and the per-loop Redis pools are process-wide."""

    # -- read-through ---------------------------------------------------------------------
    async def aget_or_load(self, key: Any, loader: Callable[[], Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> Any:
        """``get_or_load`` for coroutines: ``loader`` may be sync or async; one load per key everywhere."""
        return await afill.aget_or_load(cast(afill.AsyncFillable, self), key, loader, timeout, version)

    async def aget_or_set(self, key: Any, default: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> Any:
        """Django's aget_or_set, single-flight across coroutines, threads and processes."""
        loader = default if callable(default) else (lambda: default)
        return await afill.aget_or_load(cast(afill.AsyncFillable, self), key, loader, timeout, version)

    # -- the async fill interface (velro_cache.afill.AsyncFillable) ----------------------
    async def avalue_or_lease(self, full: str, counters: DataTypeCounters, ticket: int) -> tuple[Any, str | None]:
        """As ``value_or_lease``: L2's value (decoded, promoted, counted), else MISSING and our lease when we took it."""
        if self._l2 is None:
            next(counters.misses)
            return MISSING, None
        token = uuid.uuid4().hex
        start = time.perf_counter()
        try:
            data, taken = await self._al2_call("value_or_lease", full, token, self.options.lease_timeout)
        except L2Unavailable:
            next(counters.misses)
            return MISSING, None
        self._stats.latency["l2"].observe(time.perf_counter() - start)
        answer = self._miss_or_lease(data, taken, token, data is not None and await self._al2_answer_distrusted(), counters)
        if answer is not None:
            return answer
        found, value = await self._aaccept_from_l2(full, data, counters, ticket)
        if found:
            return value, None
        return MISSING, await self.atake_fill_lease(full)  # bytes we cannot read: a miss we may fill

    async def atake_fill_lease(self, full: str) -> str | None:
        token = uuid.uuid4().hex
        try:
            return token if await self._al2_call("acquire_lease", full, token, self.options.lease_timeout) else None
        except L2Unavailable:
            return None

    async def arelease_fill_lease(self, full: str, token: str) -> None:
        try:
            await self._al2_call("release_lease", full, token)
        except L2Unavailable:
            pass

    async def apeek_fill(self, full: str, counters: DataTypeCounters, ticket: int) -> tuple[bool, Any, bool]:
        data, leased = await self._al2_call("peek_fill", full)
        if data is not None and await self._al2_answer_distrusted():
            data = None  # a miss, but the lease taken stands: this caller fills
        if data is None:
            return False, None, leased
        found, value = await self._aaccept_from_l2(full, data, counters, ticket)
        return found, value, leased

    async def astore_fill(self, full: str, value: Any, seconds: float | None, delta: float, token: str | None, ticket: int) -> None:
        expires_at = None if seconds is None else time.time() + seconds
        if self._l2 is None:
            if self._store_l1(full, value, seconds, ticket=ticket):
                self._state.remember_load(full, delta, expires_at)
            return
        ((data, encoded),) = await self._awires([(full, value)], seconds, delta)
        try:
            stored = await self._al2_call("store_if_leased", full, token, data, seconds, self._state.drop_message([full]))
        except L2Unavailable:
            return
        if stored:
            self._state.remember_load(full, delta, expires_at)
            self._store_l1(full, value, seconds, encoded, ticket)

