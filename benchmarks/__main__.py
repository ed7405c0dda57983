"""Run every benchmark: ``python -m benchmarks [--quick] [--out DIR] [NAME ...]``.

Each benchmark runs in its own process, one after the other: a crash or a
missed budget in one must not hide the others' results, imports and Django
settings of one must not leak into the next, and running them concurrently
would make them time each other.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from .common import EXIT_BUDGET_MISSED, ROOT

# Fast and most-watched first; hit_rate replays long traces for minutes.
MODULES = (
    "latency", "telemetry", "switches", "l2", "miss_path", "async_paths", "redis_api", "compression", "resilience", "staleness",
    "invalidation", "write_capture", "views", "authz", "warming", "traffic", "histories", "hit_rate",
)  # fmt: skip


def _outcome(code: int) -> str:
    if code == 0:
        return "ok"
    if code == EXIT_BUDGET_MISSED:
        return "budget missed (see its report)"
    return f"exit {code} (an error, or for hit_rate a budget miss: see its output)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.strip().splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"subset to run (default all: {', '.join(MODULES)})")
    parser.add_argument("--quick", action="store_true", help="smoke run: few iterations, results not written unless --out")
    parser.add_argument("--out", help="results directory passed to every benchmark")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(MODULES))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(MODULES)}")

    passthrough = (["--quick"] if args.quick else []) + (["--out", args.out] if args.out else [])
    outcomes = []
    for name in args.names or MODULES:
        print(f"\n=== benchmarks.{name} ===", flush=True)
        started = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", f"benchmarks.{name}", *passthrough], cwd=ROOT)
        outcomes.append((name, code, time.perf_counter() - started))

    print("\n=== summary ===")
    for name, code, seconds in outcomes:
        print(f"{name:<12} {seconds:7.1f} s  {_outcome(code)}")
    codes = {code for _, code, _ in outcomes}
    if codes <= {0}:
        return 0
    return EXIT_BUDGET_MISSED if codes <= {0, EXIT_BUDGET_MISSED} else 1


if __name__ == "__main__":
    sys.exit(main())
