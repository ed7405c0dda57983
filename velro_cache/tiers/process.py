"""What one logical cache keeps per process, and the rules for filling L1.

Django builds a backend instance per thread; everything here is shared by all
of them: the L1 store, stats, the fill locks, the breaker, the coherence
listener, and two small ledgers:

* ``WriteLog`` makes L1 fills race-free. A reader takes a ticket before it
  reads L2 or runs a loader; every write, delete or received invalidation of a
  key is noted (under the store lock, together with the L1 change). A fill may
  go into L1 only if nothing happened to its key since its ticket, so a value
  read before an invalidation is never stored after it.
* ``PendingInvalidations`` remembers writes that could not reach Redis; when
  Redis answers again they are replayed as deletes (and announced), so nothing
  stale survives an outage in L2 or any L1. Past its limit it asks for a clear
  of the cache's keys instead. On a cluster they are announced as held when
  they fail, and what others announce is kept in ``held`` (``tiers.cluster``).

L1 is on only while L2 is coherent: the listener is subscribed and the breaker
is closed. In L1-only mode it is always on.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .. import switches
from ..options import TieredOptions
from ..stats import CacheStats
from . import incarnation
from .breaker import CLOSED, OPEN, CircuitBreaker
from .cluster import ClusterRedisTier, HeldKeys
from .coherence import (
    CLEAR,
    HOLD,
    CoherenceListener,
    channel_for,
    clear_message,
    drop_message,
    endpoints_for,
    hold_message,
    new_origin,
)
from .errors import describe
from .memory import MemoryStore
from .redis import RedisTier

logger = logging.getLogger("velro_cache")

WRITE_LOG_LIMIT = 100_000
PENDING_LIMIT = 10_000
LOADED_LIMIT = 100_000


class WriteLog:
    """Sequence numbers of the latest change per key, for race-free fills."""

    def __init__(self) -> None:
        self._seq = itertools.count(1)
        # The latest number handed out, kept beside the count so a ticket is
        # one attribute read (every L2 read takes one) rather than a parse of
        # the count's repr. Set just after each number is taken, so it can
        # only lag: a ticket taken in between is one lower, which makes the
        # fill it guards more careful (the change counts as after it), never
        # less.
        self._issued = 0
        self._last: dict[str, int] = {}
        self._floor = 0

    def ticket(self) -> int:
        """Taken before reading: changes from now on carry a number >= it."""
        return self._issued + 1

    def note(self, keys: Sequence[str]) -> None:
        seq = next(self._seq)
        self._issued = seq
        if len(self._last) > WRITE_LOG_LIMIT:
            self.note_all()
            return
        for key in keys:
            self._last[key] = seq

    def note_all(self) -> None:
        """Everything changed (clear, lost channel): every ticket so far is void."""
        self._floor = self._issued = next(self._seq)
        self._last.clear()

    def unchanged_since(self, key: str, ticket: int) -> bool:
        return self._floor < ticket and self._last.get(key, 0) < ticket

    def unchanged_items(self, items: list[tuple], ticket: int) -> list[tuple]:
        """The ``(key, ...)`` items whose key is ``unchanged_since(ticket)``: a batch's check in one pass."""
        if self._floor >= ticket:
            return []
        last = self._last.get
        return [item for item in items if last(item[0], 0) < ticket]


class PendingInvalidations:
    """Keys (and prefixes to clear) whose changes Redis has not heard of."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.keys: set[str] = set()
        self.clear_prefixes: set[str] = set()

    def add(self, keys: Sequence[str], key_prefix: str) -> None:
        with self._lock:
            if key_prefix in self.clear_prefixes:
                return
            self.keys.update(keys)
            if len(self.keys) > PENDING_LIMIT:
                self.clear_prefixes.add(key_prefix)
                self.keys = {key for key in self.keys if not key.startswith(key_prefix)}

    def add_clear(self, key_prefix: str) -> None:
        with self._lock:
            self.clear_prefixes.add(key_prefix)

    def restore(self, keys: set[str], prefixes: set[str]) -> None:
        """Put back what a failed replay took, within the same limits as ``add``."""
        for prefix in prefixes:
            self.add_clear(prefix)
        with self._lock:
            self.keys.update(key for key in keys if not any(key.startswith(p) for p in self.clear_prefixes))
            if len(self.keys) > PENDING_LIMIT:
                self.clear_prefixes.update(prefixes or {""})
                self.keys = set()

    def take(self) -> tuple[set[str], set[str]]:
        with self._lock:
            keys, prefixes = self.keys, self.clear_prefixes
            self.keys, self.clear_prefixes = set(), set()
            return keys, prefixes

    def __len__(self) -> int:
        return len(self.keys) + len(self.clear_prefixes)

    def __bool__(self) -> bool:
        return bool(self.keys or self.clear_prefixes)


class KeyLocks:
    """One lock per key in flight, dropped when its last holder leaves."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, list] = {}  # key -> [lock, holders]

    @contextmanager
    def lock_for(self, key: str) -> Iterator[None]:
        with self._guard:
            slot = self._locks.setdefault(key, [threading.Lock(), 0])
            slot[1] += 1
        try:
            with slot[0]:
                yield
        finally:
            with self._guard:
                slot[1] -= 1
                if slot[1] == 0:
                    del self._locks[key]


class ProcessState:
    """Everything one logical cache shares across the threads of a process."""

    def __init__(self, options: TieredOptions) -> None:
        self.options = options
        self.store = MemoryStore(options.l1_max_bytes)
        self.store.use_lru(not switches.on(switches.EVICTION_POLICY, switches.process_subject()))
        self.stats = CacheStats()
        self.key_memos: dict[tuple, dict] = {}
        self.first_readers: dict[int, Any] = {}  # codec -> the store's shared first-read reader (backends)
        incarnation.subscribe(self.forget_all_local)  # a Redis that came back older: nothing local is trusted
        self._start_process_parts(wait_for_channel=True)

    def _start_process_parts(self, *, wait_for_channel: bool = False) -> None:
        """The parts that must be new in every process (also after a fork)."""
        options = self.options
        self.origin = new_origin()
        self.flights = KeyLocks()
        self.writes = WriteLog()
        self.pending = PendingInvalidations()
        # Held while a replay is delivered: a read that finds the pending set
        # empty because another thread took it must still wait for the delivery.
        self.replaying = threading.Lock()
        self.loaded: dict[str, tuple[float, float | None]] = {}  # key -> (load seconds, epoch expiry)
        self.l2: RedisTier | None = None
        self.listener: CoherenceListener | None = None
        self.held = HeldKeys()  # on a cluster: what other processes announced they hold back
        self._announce_failed_at = -1.0  # monotonic time of the last failed hold announcement
        self.breaker = CircuitBreaker()
        self.l1_enabled = not options.redis_urls
        self._trust_lock = threading.Lock()
        self._trust_floor = 0.0
        self._awaited = 0.0  # send time of the PING a request start sent and did not wait for (0: none)
        # For ``l2_reads_trusted``: answers from Redis are misses until
        # ``l2_distrusted_until`` (monotonic; the bound after an outage ends),
        # ``heard`` is the send time of the latest answered PING (0: none yet),
        # and after a lapse a failed re-confirmation is not retried before
        # ``_reconfirm_after``.
        self.l2_distrusted_until = 0.0
        self.heard = 0.0
        self._reconfirm_after = 0.0
        if not options.redis_urls:
            return
        self.store.trusted_until = 0.0  # until the listener's first PONG
        self.store.regain_trust = self._regain_trust
        url = options.redis_urls[0]
        if options.cluster:  # chosen once here, so the single-Redis path carries no cluster checks
            self.l2 = ClusterRedisTier(
                options.redis_urls, options, channel_for(url), self.held,
                announce_node=lambda: None if self.listener is None else self.listener.subscribed_node,
            )
        else:
            self.l2 = RedisTier(url, options, channel_for(url))
        self.breaker.add_listener(self._on_breaker)
        self.listener = CoherenceListener(
            url,
            self.origin,
            on_drop=self.apply_remote_drop,
            on_lost=self._on_channel_lost,
            on_ready=self._on_channel_ready,
            on_confirm=self._on_confirm,
            on_held=self._on_held,
            hurry=lambda: bool(self.pending),
            ping_every=options.staleness_bound / 4,
            endpoints=endpoints_for(options),
        )
        self.listener.start()
        if wait_for_channel:
            # A new cache waits briefly for its subscription so its first
            # requests can use L1; if Redis is down it goes on without.
            self.listener.ready_event.wait(timeout=1.0)

    def after_fork(self) -> None:
        """A forked child inherits L1 contents but not the listener thread: start over.

        Locks are replaced too: one held by another parent thread at fork time
        would never be released in the child.
        """
        self.store.lock = threading.RLock()
        self.replaying = threading.Lock()
        self.store.clear()
        self._awaited = 0.0  # the parent's PING: its PONG goes to the parent's listener
        self.stats.reset_locks()
        self._start_process_parts()

    # -- messages ------------------------------------------------------------------------
    def drop_message(self, keys: Sequence[str]) -> bytes:
        return drop_message(self.origin, keys)

    def clear_message(self, key_prefix: str = "") -> bytes:
        return clear_message(self.origin, key_prefix)

    # -- writes Redis did not take ----------------------------------------------------------
    def hold_back(self, keys: Sequence[str], key_prefix: str) -> None:
        """A write of ``keys`` did not reach Redis: drop local copies, replay it as deletes later, announce it held."""
        self._announce_held(self.hold_back_unannounced(keys, key_prefix))

    def hold_back_unannounced(self, keys: Sequence[str], key_prefix: str) -> bytes | None:
        """``hold_back`` but the announcement: its message when one is due, for the async API to await itself."""
        self.forget_local(keys)
        self.pending.add(keys, key_prefix)
        return self._due(hold_message(self.origin, keys))

    def hold_back_clear(self, key_prefix: str) -> None:
        """A clear of ``key_prefix`` did not reach Redis: replay it later, announce it held."""
        self._announce_held(self.hold_back_clear_unannounced(key_prefix))

    def hold_back_clear_unannounced(self, key_prefix: str) -> bytes | None:
        """``hold_back_clear`` but the announcement, as ``hold_back_unannounced``."""
        self.pending.add_clear(key_prefix)
        return self._due(hold_message(self.origin, [key_prefix], prefix=True))

    def _due(self, message: bytes) -> bytes | None:
        """``message`` if a hold announcement is to be made: on a cluster (``tiers.cluster``); on one Redis there is nothing to do.

        On one Redis a write that cannot reach it means the others'
        confirmations stop too. After an announcement failed, none is tried
        until a PING sent after the failure is answered: the node is not
        answering, the processes subscribed through it stop trusting their
        L1 by themselves, and trying would add a socket timeout to every
        write of the outage.
        """
        if not isinstance(self.l2, ClusterRedisTier) or self.heard <= self._announce_failed_at:
            return None
        return message

    def _announce_held(self, message: bytes | None) -> None:
        if message is not None and isinstance(self.l2, ClusterRedisTier):
            self.held_announced(self.l2.announce_held(message))

    def held_announced(self, taken: bool) -> None:
        """Whether a hold announcement reached a node; after a failure none is tried for a while (``_due``)."""
        if not taken:
            self._announce_failed_at = time.monotonic()

    def _on_held(self, op: str, keys: list[str]) -> None:
        """Another process holds writes back (HOLD, HOLD_PREFIX) or cleared a prefix (CLEAR releases it)."""
        if op == CLEAR:  # the listener drops L1 after this
            for prefix in keys:
                self.held.release_prefix(prefix)
        elif op == HOLD:
            self.held.hold(keys)  # first: a read from now on misses, and the note below voids one in flight
            self.forget_local(keys)
        else:
            self.held.hold([], keys)
            self.forget_all_local()  # a held clear names no key

    # -- L1 changes (all under the store lock, so fills can check atomically) ---------
    def forget_local(self, keys: Sequence[str]) -> None:
        """A change to these keys happened (here or elsewhere): note it and drop L1 copies."""
        with self.store.lock:
            self.writes.note(keys)
            self.store.delete_many(keys)
            if self.loaded:
                pop = self.loaded.pop
                for key in keys:
                    pop(key, None)

    def forget_all_local(self) -> None:
        with self.store.lock:
            self.writes.note_all()
            self.store.clear()
            self.loaded.clear()

    def begin_write(self, keys: Sequence[str]) -> int:
        """Before a write goes to Redis: note it, drop L1 copies, and return its ticket.

        The note voids older fills of these keys; the ticket, taken after it,
        lets ``settle_write`` see any change made by others after this point.
        """
        with self.store.lock:  # reentrant: forget_local takes it too
            self.forget_local(keys)
            return self.writes.ticket()

    def settle_write(self, key: str, payload: object | None, weight: int, expires_at: float | None, ticket: int) -> None:
        """``settle_writes`` of one key."""
        self.settle_writes([(key, payload, weight, expires_at)], ticket)

    def settle_writes(self, items: list[tuple[str, object | None, int, float | None]], ticket: int) -> None:
        """After Redis took a write of ``(key, payload, weight, expires_at)`` items: hold each new value
        only if nobody else changed its key since.

        Another process's write heard in between, or another thread's write in
        this process, means Redis may hold a different value than ours: L1 then
        keeps nothing and the next read asks Redis. A payload of None (a
        counter) or a key the ``l1`` switch leaves out keeps nothing either.
        The kept values are admitted in one pass (``MemoryStore.set_many``), as
        a get_many's promotion is. Our own note comes last so that fills which
        started before this write are refused too.
        """
        with self.store.lock:
            keys = [item[0] for item in items]
            keep: list[tuple[str, object, int, float | None]] = []
            if self.l1_enabled:
                keep = [item for item in self.writes.unchanged_items(items, ticket) if item[1] is not None]
                if keep and switches.percent(switches.L1) < 100.0:
                    keep = [item for item in keep if switches.on(switches.L1, item[0])]
            stored = self.store.set_many(keep) if keep else []
            if len(stored) < len(keys):
                held = set(stored)
                self.store.delete_many([key for key in keys if key not in held])
            self.writes.note(keys)

    def fill_l1(self, key: str, payload: object, weight: int, expires_at: float | None, ticket: int | None) -> bool:
        """Store in L1 unless L1 is off or (with a ticket) the key changed since the read began."""
        with self.store.lock:
            if not self.l1_enabled or (self.l2 is not None and not switches.on(switches.L1, key)):
                return False
            if ticket is not None and not self.writes.unchanged_since(key, ticket):
                return False
            if self.store.set(key, payload, weight, expires_at):
                return True
            self.store.delete(key)  # a rejected value must not leave an older one behind
            return False

    def fill_l1_many(self, items: list[tuple[str, object, int, float | None]], ticket: int) -> list[str]:
        """``fill_l1`` for a batch read together (one ticket, one lock): the keys stored.

        A key changed since ``ticket``, or one the ``l1`` switch leaves out, is
        skipped; the store admits the rest in
        one pass (``MemoryStore.set_many``), so a get_many promotes 100 values
        for about the bookkeeping of one.
        """
        with self.store.lock:
            if not self.l1_enabled:
                return []
            if self.l2 is not None and switches.percent(switches.L1) < 100.0:  # asked per key only in a rollout
                items = [item for item in items if switches.on(switches.L1, item[0])]
            return self.store.set_many(self.writes.unchanged_items(items, ticket))

    def apply_remote_drop(self, keys: list[str] | None) -> None:
        if keys is None:
            self.forget_all_local()
        else:
            self.held.release(keys)  # a write another process delivered: Redis holds it (see _on_held for holds)
            self.forget_local(keys)

    def remember_load(self, key: str, delta: float, expires_at: float | None) -> None:
        if delta <= 0:
            return
        if len(self.loaded) >= LOADED_LIMIT:
            self.loaded.clear()
        self.loaded[key] = (delta, expires_at)

    # -- trusting L1: the staleness bound and read-your-writes ----------------------------
    def _on_confirm(self, sent: float, overdue: float) -> None:
        """A PING sent at ``sent`` came back: every message before it is applied, so L1 is current as of then.

        Hits are served until ``sent`` plus the bound, so a write whose message
        is lost or delayed (Redis stopped, a silent socket, this thread starved)
        is served stale for at most the bound. Confirmations older than a
        failed sync (``distrust``) are ignored: they predate what it waited for.
        ``overdue``: how long the listener went on pinging while this PING was
        unanswered; past the bound, Redis was not answering (an outage, not
        this thread's starvation, which stops the pinging too).
        """
        bound = self.options.staleness_bound
        with self._trust_lock:
            self.heard = max(self.heard, sent)
            if sent >= self._trust_floor:
                self.store.trusted_until = max(self.store.trusted_until, sent + bound)
        if overdue > bound:
            self._distrust_l2_for(bound)
        if self.pending or self.breaker.state != CLOSED:
            self._recover_after_outage()

    def l2_reads_trusted(self) -> bool:
        """May an answer from Redis be used? Not within the staleness bound of an outage's end.

        During an outage another process's write may have been dropped (held
        for replay), leaving in Redis the value it replaced; that process
        delivers it within a ping of Redis answering it again. So this process
        uses Redis's answers only once it has heard Redis for the bound since
        the outage ended for it: not while its breaker is not closed, not
        within the bound after it closes, after its subscription comes back or
        after a PING answered late (a freeze this process made no call
        during). When its own confirmations have lapsed it asks again (one
        PING, waited for at most the bound) before it trusts an answer.
        Before the first confirmation nothing can have been missed.
        """
        now = time.monotonic()
        if self.breaker.state != CLOSED or now < self.l2_distrusted_until:
            return False
        heard = self.heard
        if heard == 0.0 or now - heard <= self.options.staleness_bound:
            return True
        return self._reconfirm(now)

    def _reconfirm(self, now: float) -> bool:
        """Confirmations lapsed (a frozen or unreachable Redis, or a starved listener): is Redis answering?"""
        listener = self.listener
        if listener is None or now < self._reconfirm_after:
            return False
        bound = self.options.staleness_bound
        start = listener.request_sync()
        if start is None or not listener.wait_synced(start, bound):
            self._reconfirm_after = time.monotonic() + bound  # a dead channel must not cost every read the bound
            return False
        return time.monotonic() >= self.l2_distrusted_until

    def _distrust_l2_for(self, seconds: float) -> None:
        self.l2_distrusted_until = max(self.l2_distrusted_until, time.monotonic() + seconds)

    def distrust(self, since: float) -> None:
        """Serve no L1 hit until a PING sent at or after ``since`` is answered."""
        with self._trust_lock:
            self._trust_floor = max(self._trust_floor, since)
            self.store.trusted_until = 0.0

    def request_sync(self) -> float | None:
        """Begin confirming L1 is current as of now (one PING); None when nothing needs confirming."""
        if self.listener is None or not self.l1_enabled:
            return None  # L1 only (always current) or L1 off (nothing served from it)
        start = self.listener.request_sync()
        if start is None:
            self.distrust(time.monotonic())
        return start

    def wait_synced(self, start: float, timeout: float) -> bool:
        """Wait for the PONG of ``request_sync``; past ``timeout`` L1 serves nothing until one comes."""
        assert self.listener is not None
        if self.listener.wait_synced(start, timeout):
            return True
        self.distrust(start)
        return False

    def begin_sync(self) -> None:
        """Read-your-writes without waiting now: L1 serves no hit until a PING sent from now on is answered.

        The PING goes out at once and the request goes on (middleware, its
        own Redis and database reads); the first L1 read that finds the L1
        untrusted waits for that PONG (``_regain_trust``), by which time it
        has usually been handled, so the round trip overlaps the request's
        own instead of preceding it. Distrusting before sending means only
        a PONG of this PING or a later one restores trust.
        """
        if self.listener is None or not self.l1_enabled:
            return  # L1 only (always current) or L1 off (nothing served from it)
        self.distrust(time.monotonic())
        start = self.listener.request_sync()
        if start is not None:
            self._awaited = start

    def _regain_trust(self) -> bool:
        """An L1 read met an untrusted L1: wait for the PONG ``begin_sync`` asked for, at most the rest of the bound.

        Past the bound (Redis stopped, the socket silent) the wait is given
        up and L1 serves nothing until a later PING is answered, as when
        ``confirm_current`` times out; only the next ``begin_sync`` waits again.
        """
        awaited, listener = self._awaited, self.listener
        if not awaited or listener is None or listener.is_own_thread():
            return False  # the listener itself must never wait for a PONG only it can handle
        remaining = awaited + self.options.staleness_bound - time.monotonic()
        if remaining <= 0 or not listener.wait_synced(awaited, remaining):
            if self._awaited == awaited:
                self._awaited = 0.0
            return False
        return time.monotonic() < self.store.trusted_until

    # -- turning L1 off and on ----------------------------------------------------------
    def _disable_l1(self) -> None:
        with self.store.lock:
            self.l1_enabled = False
            self.forget_all_local()

    def _coherent(self) -> bool:
        return self.listener is not None and self.listener.ready and self.breaker.state == CLOSED

    def _enable_l1_if_coherent(self) -> None:
        if not self._coherent():
            return
        self.replay_pending()
        with self.store.lock:
            if not self._coherent():  # lost again meanwhile: _disable_l1 waits for this lock
                return
            self.forget_all_local()  # anything may have changed while we were away
            self.l1_enabled = True

    def _on_channel_lost(self, reason: str) -> None:
        self._disable_l1()

    def _on_channel_ready(self, resumed: bool) -> None:
        # A confirmed subscription proves Redis answers: probe the breaker now
        # rather than after its back-off, so L2 and L1 return within the
        # listener's reconnect time.
        if resumed:
            self._distrust_l2_for(self.options.staleness_bound)  # back after a loss: see l2_reads_trusted
        if self.breaker.state != CLOSED:
            self._probe_l2()
        self._enable_l1_if_coherent()

    def _recover_after_outage(self) -> None:
        """Redis answered the listener: recover now, without waiting for traffic or a back-off.

        Called on every PONG (every quarter of the staleness bound), so the
        invalidations an outage held back are delivered within one ping of
        Redis answering: until they are, other processes read from Redis the
        values those writes replaced. With nothing held back, an open breaker
        is probed only when its back-off allows.
        """
        if self.breaker.state != CLOSED and (self.pending or self.breaker.allow()):
            self._probe_l2()
        if self.pending and self.breaker.state == CLOSED:
            self.replay_pending()

    def _probe_l2(self) -> None:
        """PING through the main pool; its outcome closes or reopens the breaker."""
        l2 = self.l2
        if l2 is None:  # L1 only: no listener or breaker callback is wired to call this
            return
        try:
            l2.client.ping()
        except Exception:
            self.breaker.record_failure()
        else:
            self.breaker.record_success()

    def _on_breaker(self, old: str, new: str) -> None:
        if new == OPEN:
            # Once per outage: a failed probe reopening it is the same outage.
            if old == CLOSED:
                logger.warning("velro_cache: Redis unavailable, circuit open; serving without L2 and L1")
            self._disable_l1()
        elif new == CLOSED:
            logger.warning("velro_cache: Redis is back, circuit closed")
            self._distrust_l2_for(self.options.staleness_bound)
            self._enable_l1_if_coherent()

    def holds_back(self) -> bool:
        """Whether Redis has not yet heard every invalidation an outage held back: some wait, or a delivery is under way.

        ``pending`` alone is empty while a delivery is in flight (it took
        them), and that delivery can still delete what a later write stores.
        """
        return bool(self.pending) or self.replaying.locked()

    def replay_pending(self) -> bool:
        """Deliver the invalidations an outage held back; keep them if Redis fails again.

        One delivery at a time, and callers wait for one in flight: until it
        lands, Redis still holds what those invalidations replace. Returns
        whether Redis has what was held back: False when delivery failed, here
        or in the delivery this call waited for (it put its set back).
        """
        with self.replaying:
            return self._deliver_pending()

    def _deliver_pending(self) -> bool:
        keys, prefixes = self.pending.take()
        if not keys and not prefixes or self.l2 is None:
            return not self.pending
        try:
            for prefix in prefixes:
                self.l2.clear(prefix, self.clear_message(prefix))
            if keys:
                self.l2.delete_many(sorted(keys), self.drop_message(sorted(keys)))
        except Exception as exc:
            # A warning when it starts an outage; each retry while it lasts is quiet.
            log = logger.warning if self.breaker.state == CLOSED else logger.debug
            log("velro_cache: replaying %d invalidations failed (%s); will retry", len(keys) + len(prefixes), describe(exc))
            self.pending.restore(keys, prefixes)
            self.breaker.force_open()
            return False
        # Our own announcement is ignored by our listener: drop local copies here,
        # noting the change so a read that began before the replay cannot refill them.
        if prefixes:
            self.forget_all_local()
        elif keys:
            self.forget_local(sorted(keys))
        return True


_states: dict[TieredOptions, ProcessState] = {}
_states_lock = threading.Lock()
_all_states: weakref.WeakSet[ProcessState] = weakref.WeakSet()


def state_for(options: TieredOptions) -> ProcessState:
    """The process's state for a cache configuration, created on first use.

    Keyed on every option (``TieredOptions`` compares all its fields but its
    problems): each option shapes the state (its pool, timeouts, signing key,
    leases, L1 bounds), so an alias configured differently must not inherit
    another's. Aliases configured identically share one state, as LocMemCache
    aliases with one location share data, which Django's own suite expects.
    """
    with _states_lock:
        state = _states.get(options)
        if state is None:
            state = _states[options] = ProcessState(options)
            _all_states.add(state)
        return state


def live_states() -> list[ProcessState]:
    """The states of the caches configured in this process."""
    with _states_lock:
        return list(_states.values())


def confirm_current(timeout: float | None = None) -> bool:
    """Read-your-writes: make every L1 of this process current as of now (see ``velro_cache.freshness``).

    One PING per cache with an L2, all sent before any is waited for; each
    waits at most its staleness bound (or ``timeout``). True if all confirmed;
    a cache that did not serves no L1 hit until one does.
    """
    started = [(state, state.request_sync()) for state in live_states()]
    confirmed = True
    for state, start in started:
        if start is not None:
            bound = state.options.staleness_bound if timeout is None else timeout
            confirmed = state.wait_synced(start, max(0.0, start + bound - time.monotonic())) and confirmed
    return confirmed


def begin_current() -> None:
    """Read-your-writes without the wait at the start: ``confirm_current``'s PING is sent, and the first
    L1 read that needs it waits for its PONG (``ProcessState.begin_sync``). For threads whose L1 reads
    may block (a WSGI request); an event loop calls ``confirm_current`` in a thread instead."""
    for state in live_states():
        state.begin_sync()


def discard(state: ProcessState) -> None:
    """Stop a state's listener and forget it (tests; reconfiguring a process)."""
    with _states_lock:
        for key, known in list(_states.items()):
            if known is state:
                del _states[key]
    if state.listener is not None:
        state.listener.stop()
    state.store.clear()


def _reset_after_fork() -> None:
    global _states_lock
    _states_lock = threading.Lock()
    for state in list(_all_states):
        state.after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)
