"""How long a cached value lives: per data type, adapted to how it is used, jittered.

The base TTL comes from ``VELRO_CACHE["TTL"]`` by data type. A key's data type
is its first part, translated by ``VELRO_CACHE["KEY_DATA_TYPES"]`` (so
``gen:456:meta`` and ``generation:456:meta`` both live by the ``generation``
TTL); a first part that is itself a TTL name needs no entry.

Adaptive TTL: a key read often and changed rarely is worth keeping longer,
one that changes often is not worth keeping long (each change makes it
unreachable anyway). The base is multiplied by
``(reads + HOT_READS) / (HOT_READS * (1 + changes))`` - 1 with no history, x2
after ``HOT_READS`` reads without a change, x0.5 after a change nobody read -
clamped to ``[TTL_MIN_FACTOR, TTL_MAX_FACTOR]``. Reads and changes are counted
per *subject*: the key's most specific namespace (``generation:456`` for
``generation:456:meta``), because changes are recorded where invalidation
happens, on namespaces. Counts live in a fixed-size count-min sketch that is
halved every ``DECAY_EVERY`` events: bounded memory, recent behaviour weighs
most, and a lost increment under a thread race only blurs a statistic.

Jitter: the result is multiplied by a uniform factor in ``1 ± TTL_JITTER`` so
entries written together (a warm-up, a batch read) do not expire together.
"""

from __future__ import annotations

import functools
import itertools
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import switches
from .conf import VelroSettings, current_settings
from .keys import SEPARATOR, STAMP_MARK
from .namespaces import levels

HOT_READS = 8
SKETCH_SLOTS = 4096  # per row; two rows
DECAY_EVERY = SKETCH_SLOTS * 8


@dataclass(frozen=True)
class TtlRules:
    """The TTL table and adaptive rules: the settings that decide a key's TTL.

    Taken from the parsed settings (already valid) once per settings change,
    because they are consulted on every read.
    """

    ttl: Mapping[str, int]
    default_ttl: int
    data_types: Mapping[str, str]
    adaptive: bool  # the setting; ttl_for asks the adaptive-TTL switch, which also has runtime values
    min_factor: float
    max_factor: float
    jitter: float


@functools.lru_cache(maxsize=1)
def _rules_of(parsed: VelroSettings) -> TtlRules:
    return TtlRules(
        ttl=parsed.TTL,
        default_ttl=parsed.DEFAULT_TTL,
        data_types=parsed.KEY_DATA_TYPES,
        adaptive=parsed.ADAPTIVE_TTL,
        min_factor=parsed.TTL_MIN_FACTOR,
        max_factor=parsed.TTL_MAX_FACTOR,
        jitter=parsed.TTL_JITTER,
    )


def ttl_rules() -> TtlRules:
    """The rules of the settings in force (a new parse after every settings change)."""
    return _rules_of(current_settings())


# -- data types ---------------------------------------------------------------------------


def ttl_data_type(key: Any, rules: TtlRules | None = None) -> str | None:
    """The data type whose TTL applies to a key, or None when none is configured (``rules``: those in force)."""
    rules = rules or ttl_rules()
    segment = str(key).partition(SEPARATOR)[0]
    name = rules.data_types.get(segment, segment)
    return name if name in rules.ttl else None


def base_ttl(key: Any) -> int | None:
    """The configured seconds for the key's data type (no adaptation, no jitter)."""
    rules = ttl_rules()
    name = ttl_data_type(key, rules)
    return None if name is None else rules.ttl[name]


# -- usage statistics -----------------------------------------------------------------------


class AccessSketch:
    """Approximate, decaying read and change counts per subject in fixed memory."""

    def __init__(self, slots: int = SKETCH_SLOTS, decay_every: int = DECAY_EVERY) -> None:
        if slots & (slots - 1):
            raise ValueError("slots must be a power of two")
        self._mask = slots - 1
        self._decay_every = decay_every
        self._lock = threading.Lock()
        self._events = itertools.count(1)
        self.reads = [0] * (2 * slots)
        self.changes = [0] * (2 * slots)

    def _slots(self, subject: str) -> tuple[int, int]:
        h = hash(subject)
        return h & self._mask, self._mask + 1 + ((h >> 20) & self._mask)

    def record_read(self, subject: str) -> None:
        self._count(self.reads, subject)

    def record_change(self, subject: str) -> None:
        self._count(self.changes, subject)

    def _count(self, counts: list[int], subject: str) -> None:
        first, second = self._slots(subject)
        counts[first] += 1
        counts[second] += 1
        self._tick()

    def counts(self, subject: str) -> tuple[int, int]:
        """(reads, changes): each the smaller of its two slots, as in a count-min sketch."""
        first, second = self._slots(subject)
        return min(self.reads[first], self.reads[second]), min(self.changes[first], self.changes[second])

    def _tick(self) -> None:
        if next(self._events) % self._decay_every == 0:
            self.decay()

    def decay(self) -> None:
        """Halve every count, so old behaviour fades and the counts stay small."""
        with self._lock:
            self.reads = [count >> 1 for count in self.reads]
            self.changes = [count >> 1 for count in self.changes]

    def clear(self) -> None:
        with self._lock:
            self.reads = [0] * len(self.reads)
            self.changes = [0] * len(self.changes)


sketch = AccessSketch()


def subject_of(key: Any) -> str:
    """What a key's reads and changes are counted under: its most specific namespace."""
    text = str(key)
    logical, mark, _ = text.rpartition(SEPARATOR + STAMP_MARK)
    if not mark:
        logical = text
    try:
        names = levels.namespaces_of(logical)
    except ValueError:  # not a built key: count it as itself
        return logical
    return names[-1] if len(names) > 1 else logical


def record_read(key: Any) -> None:
    sketch.record_read(subject_of(key))


def record_change(namespace: str) -> None:
    """Called for each retired namespace: a change of everything under it."""
    sketch.record_change(namespace)


def adaptive_factor(reads: int, changes: int, current: TtlRules | None = None) -> float:
    """How much longer (> 1) or shorter (< 1) than its base a subject's keys live, within the bounds."""
    current = current or ttl_rules()
    factor = (reads + HOT_READS) / (HOT_READS * (1 + changes))
    return min(current.max_factor, max(current.min_factor, factor))


# -- the answer -------------------------------------------------------------------------------


def ttl_for(key: str) -> float:
    """Seconds to keep ``key``, always a number (what ``DEFAULT_TIMEOUT`` means for cached reads).

    The key's data type's TTL, adapted to its reads and changes and jittered;
    ``VELRO_CACHE["DEFAULT_TTL"]`` as it is when no data type TTL applies.
    Never None: None means "never expire" in every timeout argument.
    """
    current = ttl_rules()
    name = ttl_data_type(key, current)
    if name is None:
        return float(current.default_ttl)
    seconds = float(current.ttl[name])
    factor = 1.0
    if switches.on(switches.ADAPTIVE_TTL, key):
        factor = adaptive_factor(*sketch.counts(subject_of(key)), current)
        seconds *= factor
    if current.jitter:
        seconds *= 1 + current.jitter * (2 * random.random() - 1)
    _record_effect(name, factor, seconds)
    return seconds


# -- what adaptation did, per data type ---------------------------------------------------------

# Per data type: [TTLs given, their seconds summed, their factors summed, how many
# were shortened (factor < 1), how many lengthened (> 1)]. Sums, so the workers'
# figures add up in the deployment view; a lost increment under a thread race
# only blurs a statistic, as in the sketch.
EFFECT_FIELDS = ("ttls", "seconds", "factors", "shortened", "lengthened")
_effect: dict[str, list[float]] = {}


def _record_effect(name: str, factor: float, seconds: float) -> None:
    sums = _effect.get(name)
    if sums is None:
        sums = _effect.setdefault(name, [0, 0.0, 0.0, 0, 0])
    sums[0] += 1
    sums[1] += seconds
    sums[2] += factor
    if factor < 1.0:
        sums[3] += 1
    elif factor > 1.0:
        sums[4] += 1


def effect_sums() -> dict[str, dict[str, float]]:
    """This process's TTL sums per data type since it started (or ``reset_effect``): what telemetry publishes."""
    return {name: dict(zip(EFFECT_FIELDS, sums)) for name, sums in sorted(_effect.items())}


def effect_rows(sums: Mapping[str, Mapping[str, float]]) -> list[dict[str, Any]]:
    """Sums (of one process or the deployment's) -> one row per data type: its base TTL and what adaptation made of it.

    ``mean_factor`` above 1: its keys were kept longer than the table says
    (read often, changed rarely); below 1: shorter (changed soon after
    caching). ``mean_seconds`` is the TTL actually given, jitter included.
    """
    table = ttl_rules().ttl
    rows = []
    for name, row in sorted(sums.items()):
        count = row.get("ttls", 0) or 0
        rows.append({
            "data_type": name,
            "base_seconds": table.get(name),
            "ttls": int(count),
            "mean_factor": row.get("factors", 0) / count if count else None,
            "mean_seconds": row.get("seconds", 0) / count if count else None,
            "shortened": int(row.get("shortened", 0)),
            "lengthened": int(row.get("lengthened", 0)),
        })  # fmt: skip
    return rows


def reset_effect() -> None:
    _effect.clear()
