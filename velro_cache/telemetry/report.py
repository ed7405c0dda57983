"""The deployment's figures as text: the tables ``velro_stats`` and ``velro_bench`` print.

The same figures, from the same combined view, as the dashboard shows: per
cache the hit rate and latency per tier, one row per data type, one row per
worker (L1 occupancy, breaker, coherence), and the alerts firing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def duration(seconds: float | None) -> str:
    """Bucket bounds as people read them: us under a millisecond, ms above."""
    if seconds is None:
        return "-"
    if seconds == float("inf"):
        return ">1 s"
    return f"{seconds * 1e6:.0f} us" if seconds < 1e-3 else f"{seconds * 1e3:.1f} ms"


def size(count: int | None) -> str:
    if not count:
        return "0 B"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return str(count)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """Columns padded to their widest cell, numbers right-aligned."""
    cells = [list(map(str, headers))] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[index]) for row in cells) for index in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(cell.rjust(width) if index else cell.ljust(width) for index, (cell, width) in enumerate(zip(row, widths)))

    return [line(cells[0]), "  ".join("-" * width for width in widths)] + [line(row) for row in cells[1:]]


def cache_lines(alias: str, cache: dict[str, Any]) -> list[str]:
    totals, latency, l1 = cache["totals"], cache["latency"], cache["l1"]
    lines = [
        f"cache {alias!r}: {totals['requests']} reads over {cache['workers']} workers, hit rate {percent(totals['hit_rate'])}"
        f" (L1 {totals['l1_hits']}, L2 {totals['l2_hits']}, misses {totals['misses']}, corrupt {totals['corrupt']})",
        f"  latency  L1 p50 {duration(latency['l1']['p50'])} p95 {duration(latency['l1']['p95'])} p99 {duration(latency['l1']['p99'])}"
        f"  |  L2 p50 {duration(latency['l2']['p50'])} p95 {duration(latency['l2']['p95'])} p99 {duration(latency['l2']['p99'])}",
        f"  L1 {size(l1['bytes'])} of {size(l1['max_bytes'])}, {l1['entries']} entries, {l1['evictions']} evicted;"
        f" sets {cache['sets']}, deletes {cache['deletes']}, L2 errors {cache['l2_errors']},"
        f" breaker open in {cache['breaker_open']} workers, coherence losses {cache['coherence_losses']}",
        "",
    ]
    rows = [
        (name, row["requests"], percent(row["hit_rate"]), row["l1_hits"], row["l2_hits"], row["misses"], row["corrupt"])
        for name, row in cache["by_type"].items()
    ]
    lines += ["  " + line for line in table(("data type", "reads", "hit rate", "L1", "L2", "misses", "corrupt"), rows)]
    return lines


def worker_lines(workers: list[dict[str, Any]]) -> list[str]:
    rows = []
    for worker in workers:
        for alias, cache in worker["caches"].items():
            l1 = cache["l1"]
            rows.append(
                (
                    worker["worker"], alias, cache["requests"], percent(cache["hit_rate"]),
                    f"{size(l1.get('bytes'))} / {size(l1.get('max_bytes'))}", l1.get("entries", 0),
                    cache["breaker"] or "no L2", {True: "up", False: "DOWN", None: "-"}[cache["coherence_connected"]],
                )
            )  # fmt: skip
    return table(("worker", "cache", "reads", "hit rate", "L1 bytes", "entries", "breaker", "coherence"), rows)


def ttl_lines(rows: list[dict[str, Any]]) -> list[str]:
    """TTL per data type: the table's seconds and what adaptation made of them (``ttl.effect_rows``)."""
    if not rows:
        return ["no TTL given by data type yet"]

    def factor(value: float | None) -> str:
        return "-" if value is None else f"x{value:.2f}"

    body = [
        (row["data_type"], "-" if row["base_seconds"] is None else row["base_seconds"], row["ttls"], factor(row["mean_factor"]),
         "-" if row["mean_seconds"] is None else f"{row['mean_seconds']:.0f}", row["lengthened"], row["shortened"])
        for row in rows
    ]  # fmt: skip
    return table(("data type", "table s", "TTLs given", "mean factor", "mean s", "lengthened", "shortened"), body)


def render(view: dict[str, Any], *, complete: bool, error: str = "", alerts: Sequence[Any] = ()) -> str:
    """The whole report."""
    lines = []
    if not complete:
        lines += [f"!! Redis does not answer ({error}): these are this process's figures only, not the deployment's.", ""]
    for alias, cache in view["caches"].items():
        lines += cache_lines(alias, cache) + [""]
    if not view["caches"]:
        lines += ["No TieredCache is configured.", ""]
    lines += worker_lines(view["workers"]) + [""]
    lines += ["adaptive TTL, per data type:"] + ["  " + line for line in ttl_lines(view.get("ttl", []))] + [""]
    if alerts:
        lines += ["alerts firing:"] + [
            f"  {alert.name}: {alert.message}" + (f"\n    -> {alert.recommendation}" if alert.recommendation else "") for alert in alerts
        ]
    else:
        lines.append("no alerts firing")
    return "\n".join(lines)
