"""Redis memory per data type: how much of Redis each kind of cached data holds.

For an operator deciding TTLs and budgets (issue 11 item 6: a retired
namespace's keys used to hold memory until their TTL). Measured on demand by
``velro_stats --memory``, never on the request path: it walks the cache's keys
with ``SCAN`` (``iter_keys``) and asks ``MEMORY USAGE`` of a bounded sample
per data type, so a large keyspace costs one pass of SCAN and at most
``SAMPLE_PER_TYPE`` memory probes per type.
"""

from __future__ import annotations

from typing import Any

from ..stats import stats_group_of

SAMPLE_PER_TYPE = 200


def redis_memory(cache: Any, sample_per_type: int = SAMPLE_PER_TYPE) -> dict[str, dict[str, Any]]:
    """``{data type: {"keys", "sampled", "bytes"}}`` for one TieredCache's keys in Redis.

    ``keys`` is exact (every key is seen by SCAN); ``bytes`` is exact when
    every key of the type was sampled, else the sampled mean times ``keys``.
    Grouped as the statistics group keys (their first part: ``gen``, ``ns``,
    ``nsk`` for the namespace member sets that reclaiming uses).
    """
    client = cache.get_client()
    rows: dict[str, dict[str, Any]] = {}
    for key in cache.iter_keys("*"):
        row = rows.setdefault(stats_group_of(key), {"keys": 0, "sampled": 0, "sampled_bytes": 0})
        row["keys"] += 1
        if row["sampled"] < sample_per_type:
            used = client.memory_usage(cache.make_key(key), samples=0)
            if used is not None:
                row["sampled"] += 1
                row["sampled_bytes"] += used
    return {name: _estimate(row) for name, row in sorted(rows.items())}


def _estimate(row: dict[str, Any]) -> dict[str, Any]:
    sampled = row["sampled"]
    mean = row["sampled_bytes"] / sampled if sampled else 0
    exact = sampled == row["keys"]
    return {"keys": row["keys"], "sampled": sampled, "bytes": row["sampled_bytes"] if exact else round(mean * row["keys"])}
