"""The judge of a recorded history: which reads served a value that had already been replaced, and how stale.

The rule, per key (a register with several writers; a delete is a write of
"nothing"): a read that returned the value of write ``w`` is **stale** when
some other write or delete ``w2`` of the same key *started after ``w``
returned* and *returned before the read started*. Then ``w`` was replaced,
for certain and in every order the cache could have chosen, before the read
began; serving it is exactly what the spec forbids ("a request that starts
after another process's write returned never sees the value from before it").

- Concurrent writes are not judged: if ``w2`` overlapped ``w``, either may
  have landed last, so reading ``w`` afterwards is allowed. That is why the
  rule uses intervals, not version numbers.
- A read returning nothing (None) is always allowed: a cache may miss, and a
  delete leaves nothing.
- A write or delete that raised has no end: it may or may not have happened,
  so it replaces nothing, and its value may be read.
- **Staleness** of a stale read = its start minus the earliest end of a write
  that replaced ``w``: how long after the value was certainly replaced a
  request that had only just started was still served it (a lower bound; the
  read's own duration is not added).
- A read of a value no write stored, or of a write that started only after
  the read ended, is a broken history (the cache invented a value, or the
  recording is wrong) and is reported as ``impossible``.

``S(w)``, the earliest end of a write that started after ``w`` returned, is
computed once per write (sort by start, suffix minimum of ends), so checking
is O(n log n) in the history's length.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

INF = math.inf


@dataclass(frozen=True)
class Op:
    """One write, delete or read of one key, as recorded (times on the shared CLOCK_MONOTONIC)."""

    kind: str  # "w" write, "d" delete, "r" read
    key: str
    id: Any  # a write's or delete's version; a read's result (a version, None for a miss, or an odd repr)
    start: float
    end: float  # INF for a write that raised
    worker: int

    @classmethod
    def of(cls, event: Sequence[Any]) -> Op:
        kind, key, ident, start, end, worker = event
        return cls(kind, key, ident, start, INF if end is None else end, worker)


@dataclass(frozen=True)
class Stale:
    """One stale read: what it served, what had replaced it, and how long before the read began."""

    read: Op
    served: Op
    replaced_by: Op
    staleness: float


@dataclass
class Verdict:
    """What the checker found in one history."""

    operations: int = 0
    reads: int = 0
    writes: int = 0
    stale: list[Stale] = field(default_factory=list)
    impossible: list[str] = field(default_factory=list)

    @property
    def worst(self) -> float:
        """The worst staleness, in seconds (0 when no read was stale)."""
        return max((s.staleness for s in self.stale), default=0.0)

    def stale_within(self, start: float, end: float) -> list[Stale]:
        """Stale reads that started in ``[start, end)`` (a fault's window, for instance)."""
        return [s for s in self.stale if start <= s.read.start < end]

    def summary(self, limit: int = 5) -> str:
        """A readable account of the worst stale reads, for an assertion message."""
        lines = [f"{self.operations} operations ({self.reads} reads, {self.writes} writes/deletes), "
                 f"{len(self.stale)} stale reads, worst {self.worst * 1000:.1f} ms, {len(self.impossible)} impossible"]
        for s in sorted(self.stale, key=lambda s: -s.staleness)[:limit]:
            lines.append(
                f"  worker {s.read.worker} read {s.read.key!r} at {s.read.start:.4f}-{s.read.end:.4f} -> v{s.served.id} "
                f"(written by worker {s.served.worker}, {s.served.start:.4f}-{s.served.end:.4f}), but "
                f"{'delete' if s.replaced_by.kind == 'd' else 'write'} v{s.replaced_by.id} by worker {s.replaced_by.worker} "
                f"returned at {s.replaced_by.end:.4f}: {s.staleness * 1000:.1f} ms stale"
            )
        lines += [f"  impossible: {text}" for text in self.impossible[:limit]]
        return "\n".join(lines)


class _KeyWrites:
    """The writes and deletes of one key, indexed for "earliest end of a write that started after t"."""

    def __init__(self, writes: list[Op]) -> None:
        ordered = sorted(writes, key=lambda op: op.start)
        self.starts = [op.start for op in ordered]
        self.by_id = {op.id: op for op in writes}
        # suffix[i]: the write with the smallest end among ordered[i:]
        self.suffix: list[Op | None] = [None] * (len(ordered) + 1)
        for index in range(len(ordered) - 1, -1, -1):
            later = self.suffix[index + 1]
            op = ordered[index]
            self.suffix[index] = op if later is None or op.end < later.end else later

    def first_replacement(self, write: Op) -> Op | None:
        """The write, among those that started after ``write`` returned, that returned first."""
        if write.end == INF:
            return None
        return self.suffix[bisect.bisect_right(self.starts, write.end)]


def check(events: Iterable[Sequence[Any]]) -> Verdict:
    """Judge a history (events as the workers record them: ``[kind, key, id, start, end, worker]``)."""
    ops = [Op.of(event) for event in events]
    verdict = Verdict(operations=len(ops))
    writes: dict[str, list[Op]] = defaultdict(list)
    reads: list[Op] = []
    for op in ops:
        (reads if op.kind == "r" else writes[op.key]).append(op)
    verdict.reads, verdict.writes = len(reads), len(ops) - len(reads)
    indexed = {key: _KeyWrites(key_writes) for key, key_writes in writes.items()}
    for read in reads:
        if read.id is None:
            continue
        _judge(read, indexed.get(read.key), verdict)
    return verdict


def _judge(read: Op, key_writes: _KeyWrites | None, verdict: Verdict) -> None:
    served = key_writes.by_id.get(read.id) if key_writes is not None else None
    if key_writes is None or served is None or served.kind != "w":
        verdict.impossible.append(f"worker {read.worker} read {read.key!r} -> {read.id!r}, which no write of that key stored")
        return
    if served.start > read.end:
        verdict.impossible.append(f"worker {read.worker} read {read.key!r} -> v{read.id} before that write began")
        return
    replacement = key_writes.first_replacement(served)
    if replacement is not None and replacement.end < read.start:
        verdict.stale.append(Stale(read, served, replacement, read.start - replacement.end))
