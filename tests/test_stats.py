"""Per-process statistics: which row a key counts in, and the bound on rows."""

from __future__ import annotations

from velro_cache.stats import MAX_DATA_TYPES, OTHER_TYPE, CacheStats, stats_group_of


def test_a_key_counts_in_the_row_of_its_first_segment() -> None:
    assert stats_group_of("gen:456:meta") == "gen"
    assert stats_group_of("auth") == "auth"
    assert stats_group_of(":no-first-segment") == OTHER_TYPE
    assert stats_group_of(42) == "42"  # Django allows non-str keys


def test_rows_past_the_limit_share_the_other_row() -> None:
    stats = CacheStats()
    for i in range(MAX_DATA_TYPES + 5):
        next(stats.for_key(f"type{i}:x").misses)
    rows = stats.snapshot()["by_type"]
    assert len(rows) == MAX_DATA_TYPES + 1
    assert rows[OTHER_TYPE]["misses"] == 5
    assert stats.snapshot()["totals"]["misses"] == MAX_DATA_TYPES + 5
