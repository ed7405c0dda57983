"""A switch for each optimization: set in settings, changed at runtime, rolled out by percentage.

Each optimization has one decision point, and that point asks ``on(name,
subject)``. The answer comes from a percentage per switch: the runtime value
in Redis when one is set, else the settings value (``VELRO_CACHE["SWITCHES"]``,
or for three switches their older bool settings; see ``velro_cache.conf``).
At 100 a switch is on, at 0 off; in between it is on for the subjects whose
stable hash falls below the percentage. The subject is what the rollout is
keyed on: the user for authorization, read-your-writes and warming on login,
the cache key for L1, compression, adaptive TTL and materialized-view reads,
the worker process for the eviction policy (one L1 store orders all its keys
with one policy). The hash is of the switch's name and the subject, so raising
a percentage only adds subjects (10 % -> 20 % keeps the first 10 % on) and two
switches at 10 % do not pick the same users.

Runtime values live in one Redis hash (``velro:{switches}``, field = switch
name, value = ``on``, ``off`` or a percentage such as ``25``), on the Redis of
``VELRO_CACHE["CACHE_ALIAS"]``. Each process re-reads it once a second from
its own thread (one HGETALL), and at once when ``set``/``clear`` announce a
change on ``velro:{switches}:changed`` (a nudge, not the value: a lost nudge
only leaves the periodic read). So a change made anywhere is applied by every
worker within a second, and no read of the cache ever waits for Redis because
of a switch: ``on()`` is a dict lookup and, for a partial percentage, one
CRC32. A value in the hash that does not parse (written by hand, by an older
or newer version) is refused with a logged warning and the last good value
stays. With Redis unreachable the last good values stay too.

Turning a switch changes the decision only from then on; what an earlier
decision produced is handled where it could be wrong: L1 copies are dropped
when the L1 switch changes, the L1 store changes policy in place when the
eviction switch does, and frames compressed earlier are read whatever the
compression switch says.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .conf import VelroSettings, current_settings

logger = logging.getLogger("velro_cache.switches")

HASH_KEY = "velro:{switches}"
CHANNEL = "velro:{switches}:changed"  # set/clear announce here, so workers re-read at once
REFRESH_EVERY = 1.0  # seconds between a process's reads of the hash
_BUCKETS = 10_000  # a percentage is honoured to 0.01

L1 = "l1"
EVICTION_POLICY = "eviction_policy"
COMPRESSION = "compression"
ADAPTIVE_TTL = "adaptive_ttl"
WARMING = "warming"
AUTHZ_CACHE = "authz_cache"
READ_YOUR_WRITES = "read_your_writes"
VIEW_READS = "view_reads"


@dataclass(frozen=True)
class Switch:
    """One optimization that can be turned off: what off means, what its rollout is keyed on."""

    name: str
    off_means: str
    keyed_on: str  # "key", "user" or "process"
    older_setting: str | None = None  # an older VELRO_CACHE bool that is this switch's setting


REGISTRY: dict[str, Switch] = {
    switch.name: switch
    for switch in (
        Switch(L1, "L1 holds nothing for these keys (caches with an L2): every read goes to Redis", "key"),
        Switch(EVICTION_POLICY, "the L1 evicts in plain LRU order, without W-TinyLFU admission", "process"),
        Switch(COMPRESSION, "frames are stored uncompressed (compressed ones are still read)", "key"),
        Switch(ADAPTIVE_TTL, "cached reads live their data type's TTL (jittered), not adapted to use", "key", "ADAPTIVE_TTL"),
        Switch(WARMING, "warm() runs no step and says so; runtime preloads are not queued", "user"),
        Switch(AUTHZ_CACHE, "every authorization check runs its query", "user", "AUTHZ_CACHE"),
        Switch(READ_YOUR_WRITES, "no PING at a request's start (L1 may trail other workers' writes briefly)", "user", "READ_YOUR_WRITES"),
        Switch(VIEW_READS, "read_view(live=...) reads the live tables instead of the materialized view", "key"),
    )
}

# name -> the runtime percentage last read from Redis (absent: none set).
_runtime: dict[str, float] = {}
# name -> the raw value last refused, so a bad value is warned about once, not every second.
_refused: dict[str, bytes] = {}
_hooks: list[Callable[[str], None]] = []
_lock = threading.Lock()
# Held through a whole change, its hooks included: a set() or clear() that
# finds its value already in force (the refresher, nudged, applied it first)
# returns only once that change's consequences are done. Reentrant: a hook
# may itself set a switch.
_applying = threading.RLock()
_writes = 0  # this process's set/clear/reset calls, so a refresh that read Redis before one cannot undo it


# -- deciding ------------------------------------------------------------------------------------


def percent(name: str) -> float:
    """The percentage in force for a switch: its runtime value, else its setting."""
    runtime = _runtime.get(name)
    if runtime is not None:
        return runtime
    return setting(name)


def setting(name: str) -> float:
    """A switch's settings value as a percentage: ``SWITCHES[name]``, else its older bool setting, else on."""
    return _settings_table(current_settings())[name]


@functools.lru_cache(maxsize=1)
def _settings_table(parsed: VelroSettings) -> dict[str, float]:
    """Every switch's settings percentage, worked out once per parse of the settings (deciding is on hot paths)."""
    table = {}
    for name, switch in REGISTRY.items():
        value = parsed.SWITCHES.get(name)
        if value is None:
            value = True if switch.older_setting is None else getattr(parsed, switch.older_setting)
        table[name] = 100.0 if value is True else 0.0 if value is False else float(value)
    return table


def on(name: str, subject: Any = None) -> bool:
    """Whether the optimization ``name`` applies to ``subject`` (a key, a user id, ...).

    Without a subject a partial percentage counts as on: only 0 turns off a
    decision that has nothing to split by (``warm()`` of a whole plan).
    """
    share = percent(name)
    if share >= 100.0:
        return True
    if share <= 0.0:
        return False
    if subject is None:
        return True
    return zlib.crc32(f"{name}\0{subject}".encode("utf-8", "surrogatepass")) % _BUCKETS < share * (_BUCKETS / 100)


def process_subject() -> str:
    """The subject of a per-process switch: this worker (host and pid)."""
    return f"{socket.gethostname()}:{os.getpid()}"


# -- values --------------------------------------------------------------------------------------


def parse_value(value: Any) -> float:
    """A runtime value as a percentage: True/"on" 100, False/"off" 0, a number or "25%" from 0 to 100.

    Raises ValueError for anything else (what a worker refuses, keeping its last good value).
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, bool):
        return 100.0 if value else 0.0
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("on", "true"):
            return 100.0
        if text in ("off", "false"):
            return 0.0
        try:
            value = float(text.removesuffix("%"))
        except ValueError:
            raise ValueError(f"{value!r} is not on, off or a percentage from 0 to 100") from None
    if isinstance(value, (int, float)) and value == value and 0 <= value <= 100:
        return float(value)
    raise ValueError(f"{value!r} is not on, off or a percentage from 0 to 100")


def _text(share: float) -> str:
    """How a percentage is written to Redis: on, off, or the number."""
    if share >= 100.0:
        return "on"
    if share <= 0.0:
        return "off"
    return f"{share:g}"


def _known(name: str) -> Switch:
    switch = REGISTRY.get(name)
    if switch is None:
        raise LookupError(f"no switch {name!r}; known: {', '.join(REGISTRY)}")
    return switch


# -- the runtime store -----------------------------------------------------------------------------


def _client(using: str | None) -> Any:
    """Where the runtime values live: the raw client of the cache ``using``, or by default the
    telemetry's own client (short timeouts, no breaker) on the L2 of ``CACHE_ALIAS`` (else of the
    first TieredCache with one). L2Required when there is no Redis."""
    from .exceptions import L2Required
    from .redis_api import get_redis_connection
    from .telemetry import store

    if using is not None:
        return get_redis_connection(using)
    client = store.client()
    if client is None:
        raise L2Required("no TieredCache has a LOCATION: runtime switches need Redis (settings still apply)")
    return client


def set(name: str, value: Any, *, using: str | None = None) -> float:  # noqa: A001 - the public name of the API
    """Set a switch at runtime for every worker (each applies it within a second); returns the percentage.

    ``value``: True/False, "on"/"off", or a percentage (``25``, ``"25%"``) of
    the users or keys it is on for. Raises ValueError for anything else and
    LookupError for an unknown switch; this process applies it at once.
    """
    _known(name)
    share = parse_value(value)
    client = _client(using)
    client.hset(HASH_KEY, name, _text(share))
    _announce(client)
    _apply(lambda current: {**current, name: share})
    return share


def clear(name: str, *, using: str | None = None) -> None:
    """Drop a switch's runtime value: its setting applies again, in every worker within a second."""
    _known(name)
    client = _client(using)
    client.hdel(HASH_KEY, name)
    _announce(client)
    _apply(lambda current: {key: share for key, share in current.items() if key != name})


def _announce(client: Any) -> None:
    """Nudge every worker to re-read now; a lost nudge only means the periodic read applies it."""
    try:
        client.publish(CHANNEL, b"1")
    except Exception as exc:
        logger.debug("velro_cache: switch change not announced: %s", type(exc).__name__)


@dataclass(frozen=True)
class SwitchState:
    """What one switch is: its setting, its runtime value (None: none set) and the percentage in force."""

    name: str
    off_means: str
    keyed_on: str
    setting: float
    runtime: float | None
    percent: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "off_means": self.off_means, "keyed_on": self.keyed_on,
            "setting": self.setting, "runtime": self.runtime, "percent": self.percent,
        }


def get(name: str) -> SwitchState:
    """One switch as this process applies it (runtime values as of its last read of Redis)."""
    switch = _known(name)
    configured = setting(name)
    runtime = _runtime.get(name)
    return SwitchState(name, switch.off_means, switch.keyed_on, configured, runtime, configured if runtime is None else runtime)


def all() -> list[SwitchState]:  # noqa: A001 - the public name of the API
    """Every switch, in registry order."""
    return [get(name) for name in REGISTRY]


def refresh(using: str | None = None) -> bool:
    """Read the runtime values from Redis now (the thread does this every second); False when Redis did not answer.

    A field that does not parse, or names no switch, is refused with a
    warning (once per value) and the last good value of that switch stays.
    """
    seen = _writes
    try:
        raw = _client(using).hgetall(HASH_KEY)
    except Exception as exc:  # no L2, Redis down: the last good values stay
        logger.debug("velro_cache: switches not refreshed: %s", type(exc).__name__)
        return False
    values: dict[str, float] = {}
    for field, value in raw.items():
        name = field.decode("utf-8", "replace") if isinstance(field, bytes) else str(field)
        try:
            _known(name)
            values[name] = parse_value(value)
            _refused.pop(name, None)
        except (LookupError, ValueError) as exc:
            values.update({name: _runtime[name]} if name in _runtime else {})
            if _refused.get(name) != value:
                _refused[name] = value
                logger.warning("velro_cache: refusing runtime switch value %r for %r (%s); keeping %s", value, name, exc, _describe(name))
    _apply(lambda current: values, read_before=seen)
    return True


def _describe(name: str) -> str:
    runtime = _runtime.get(name)
    return "its setting" if runtime is None else f"{_text(runtime)}"


def _apply(update: Callable[[dict[str, float]], dict[str, float]], *, read_before: int | None = None) -> None:
    """Replace the runtime values by ``update(current)`` and tell the hooks which switches' percentages changed.

    ``read_before``: a refresh's count of local changes when it began reading
    Redis; if this process set or cleared a switch since, what it read may
    predate that write, so it is dropped (the next refresh reads it).
    """
    global _runtime, _writes
    with _applying:
        with _lock:
            if read_before is not None and read_before != _writes:
                return
            if read_before is None:
                _writes += 1
            before = {name: percent(name) for name in REGISTRY}
            _runtime = update(_runtime)
            changed = [name for name in REGISTRY if percent(name) != before[name]]
        for name in changed:
            logger.info("velro_cache: switch %r is now %s", name, _text(percent(name)))
            for hook in list(_hooks):
                try:
                    hook(name)
                except Exception:  # one consumer's failure must not stop the others
                    logger.exception("velro_cache: switch hook failed for %r", name)


def on_change(hook: Callable[[str], None]) -> None:
    """Call ``hook(name)`` (in the thread that noticed) whenever a switch's percentage in force changes."""
    if hook not in _hooks:
        _hooks.append(hook)


def reset() -> None:
    """Forget every runtime value in this process (tests; the hash in Redis is left alone)."""
    _refused.clear()
    _apply(lambda current: {})


# -- what a change must undo -----------------------------------------------------------------------


def _consequences(name: str) -> None:
    """L1 copies held under the old L1 decision are dropped; the L1 stores change policy in place."""
    from .tiers.process import live_states

    if name == L1:
        for state in live_states():
            if state.l2 is not None:
                state.forget_all_local()
    elif name == EVICTION_POLICY:
        lru = not on(EVICTION_POLICY, process_subject())
        for state in live_states():
            state.store.use_lru(lru)


on_change(_consequences)


# -- the refresher thread -------------------------------------------------------------------------

_thread: threading.Thread | None = None
_stop = threading.Event()
_owner_pid = 0


def _run(stop: threading.Event) -> None:
    """Re-read the hash REFRESH_EVERY seconds after the last read, and at once when a change is announced.

    The announcement (``set``/``clear`` publish on ``CHANNEL``) is only a
    nudge: the periodic read is what guarantees a change is seen, also one
    written by hand or while this thread's subscription was down.
    """
    nudges: Any = None
    while not stop.is_set():
        # REFRESH_EVERY after the last read, nudged or not: a value written just after a read is read a second later.
        nudges = _wait(nudges, stop, time.monotonic() + REFRESH_EVERY)
        if stop.is_set():
            break
        try:
            refresh()
        except Exception:  # a bug here must not end the refreshes for the process's life
            logger.exception("velro_cache: switch refresh failed")
    _close(nudges)


def _wait(nudges: Any, stop: threading.Event, due: float) -> Any:
    """Wait until ``due``, an announcement or ``stop``; returns the subscription to keep (None: none, retried next time)."""
    while not stop.is_set():
        left = due - time.monotonic()
        if left <= 0:
            return nudges
        if nudges is None:
            nudges = _subscribe()
            if nudges is None:  # no Redis, or it does not answer: the periodic read alone
                stop.wait(left)
                return None
        try:
            if nudges.get_message(timeout=min(left, 0.25)) is not None:  # short slices: stop() is noticed soon
                return nudges
        except Exception:  # the subscription broke: poll until the next read, subscribe again after it
            _close(nudges)
            stop.wait(max(0.0, due - time.monotonic()))
            return None
    return nudges


def _subscribe() -> Any:
    """A subscription to ``CHANNEL`` on the switches' Redis, or None."""
    try:
        pubsub = _client(None).pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(CHANNEL)
        return pubsub
    except Exception as exc:
        logger.debug("velro_cache: switch announcements not subscribed: %s", type(exc).__name__)
        return None


def _close(nudges: Any) -> None:
    if nudges is None:
        return
    try:
        nudges.close()
    except Exception:
        logger.debug("velro_cache: closing the switch subscription failed", exc_info=True)


def start(*, read_now: bool = True) -> bool:
    """Start this process's refresher once (``AppConfig.ready``; a forked child, which inherits its
    parent's values, without the first read); ``read_now`` reads the values before returning."""
    global _thread, _stop, _owner_pid
    with _lock:
        if _thread is not None and _thread.is_alive() and _owner_pid == os.getpid():
            return False
        _stop = threading.Event()
        thread = _thread = threading.Thread(target=_run, args=(_stop,), name="velro-switches", daemon=True)
        _owner_pid = os.getpid()
    if read_now:
        refresh()
    thread.start()
    return True


def stop() -> None:
    """Stop the refresher (tests and benchmarks measure with and without it)."""
    global _thread
    _stop.set()
    thread, _thread = _thread, None
    if thread is not None and thread.is_alive() and thread is not threading.current_thread():
        thread.join(timeout=2 * REFRESH_EVERY)


def _restart_in_child() -> None:
    """Threads do not survive fork(): a child of a refreshing process starts its own."""
    global _thread, _lock, _applying
    _lock = threading.Lock()  # another parent thread may have held them at fork time
    _applying = threading.RLock()
    if _thread is not None:  # it was running in the parent: run here too
        _thread = None
        start(read_now=False)


os.register_at_fork(after_in_child=_restart_in_child)
