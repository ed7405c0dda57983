"""This process's figures, as one JSON-ready dict: what the publisher sends and readers combine."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from ..options import tiered_caches
from ..ttl import effect_sums as ttl_effect_sums

_identity: tuple[int, str, float] | None = None  # (pid, worker id, started at)


def _process_identity() -> tuple[int, str, float]:
    global _identity
    pid = os.getpid()
    if _identity is None or _identity[0] != pid:  # a forked child is a new worker
        now = time.time()
        _identity = (pid, f"{socket.gethostname()}:{pid}:{int(now * 1000)}", now)
    return _identity


def worker_id() -> str:
    """``host:pid:start``: unique per process life, so a restarted worker is a new one, never a counter that went back."""
    return _process_identity()[1]


def tiered_aliases() -> list[str]:
    """The CACHES aliases served by TieredCache, in settings order."""
    return list(tiered_caches())


def _cache_figures(alias: str) -> dict[str, Any]:
    """``cache.stats()`` without the per-process quantiles: they cannot be summed, the buckets can."""
    from django.core.cache import caches

    figures = caches[alias].stats()
    figures.pop("latency_p50", None)
    figures.pop("latency_p99", None)
    return figures


def process_snapshot() -> dict[str, Any]:
    """Every TieredCache of this process, with who and when: one worker's row of the deployment."""
    pid, worker, started = _process_identity()
    return {
        "worker": worker,
        "pid": pid,
        "host": socket.gethostname(),
        "started_at": started,
        "taken_at": time.time(),
        "caches": {alias: _cache_figures(alias) for alias in tiered_aliases()},
        "warming": _warming_figures(),
        "ttl": ttl_effect_sums(),
    }


def _warming_figures() -> dict[str, Any] | None:
    """This worker's last warm-up, step by step (``velro_cache.warming.results``); None before any ran."""
    from ..warming import results

    last = results()["last_run"]
    if last is None:
        return None
    return {key: last[key] for key in ("plan", "mode", "started_at", "seconds", "entries", "errors")} | {
        "steps": [{key: step[key] for key in ("name", "status", "entries", "seconds", "error")} for step in last["steps"]]
    }
