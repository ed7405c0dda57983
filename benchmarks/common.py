"""What every velro-cache benchmark shares: Django bootstrap, timing, reports.

Benchmarks compare backends *in one run* and report ratios, because absolute
times on a shared 2-core machine drift by tens of percent between runs while
ratios measured side by side hardly move. The helpers here exist so that every
module times, summarizes and writes results the same way, and a reader can
compare tables across modules.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# Database 14 is reserved for benchmarks; tests use other numbers.
REDIS_URL = os.environ.get("VELRO_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")

PASS, FAIL = "PASS", "FAIL"
EXIT_BUDGET_MISSED = 3  # distinct from 1 (a crash) so `python -m benchmarks` can tell them apart

PACKAGES = ("django", "django-redis", "redis", "hiredis", "msgpack", "lz4", "zstandard")


# -- Django ---------------------------------------------------------------------------


def configure_django(caches: dict[str, dict[str, Any]]) -> None:
    """Configure Django in-process with only the caches a benchmark needs.

    Benchmarks must not depend on a project's settings module (that would time
    someone else's configuration), so any DJANGO_SETTINGS_MODULE is ignored.
    """
    import django
    from django.conf import settings

    if settings.configured:
        raise RuntimeError("configure_django() must run once, before anything touches settings")
    settings.configure(
        SECRET_KEY="velro-cache-benchmarks",
        USE_TZ=True,
        INSTALLED_APPS=[],
        CACHES=caches,
        LOGGING_CONFIG=None,
    )
    django.setup()


def key_prefix(name: str) -> str:
    """A KEY_PREFIX no other run shares.

    Concurrent runs (a smoke test in someone's suite, a second benchmark) on the
    shared Redis would otherwise write and delete the same keys, and with L1
    coherence every such write drops this run's L1 copy mid-measurement.
    """
    return f"bench-{name}-{os.getpid()}"


def redis_answers(url: str = REDIS_URL) -> bool:
    """Whether a Redis answers at ``url``; benchmarks that need one skip cleanly without."""
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


# -- PostgreSQL --------------------------------------------------------------------------

# Where the benchmarks that need PostgreSQL find it (VELRO_BENCH_PG_*).
PG = {
    "HOST": os.environ.get("VELRO_BENCH_PG_HOST", "127.0.0.1"),
    "PORT": os.environ.get("VELRO_BENCH_PG_PORT", "5432"),
    "USER": os.environ.get("VELRO_BENCH_PG_USER", "postgres"),
    "PASSWORD": os.environ.get("VELRO_BENCH_PG_PASSWORD", ""),
}


def postgres_admin(**connect: Any) -> Any:
    """A connection to the ``postgres`` database of ``PG``, to create and drop a benchmark's own."""
    import psycopg

    return psycopg.connect(dbname="postgres", host=PG["HOST"], port=PG["PORT"], user=PG["USER"],
                           password=PG["PASSWORD"] or None, **connect)


def ensure_database(name: str) -> None:
    """Create ``name`` if it does not exist; one seeded once is reused by later runs."""
    with postgres_admin(autocommit=True) as admin:
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            admin.execute(f'CREATE DATABASE "{name}"')


def fresh_database(name: str) -> dict[str, Any]:
    """``name`` dropped and created empty; its Django ``DATABASES`` entry."""
    with postgres_admin(autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    return {"ENGINE": "django.db.backends.postgresql", "NAME": name, **PG}


def stop_background_threads() -> None:
    """Stop this process's velro threads (telemetry, switches, coherence) before it forks load clients.

    A forked child restarts every velro thread its parent ran (they register
    ``os.register_at_fork``): each client would publish telemetry of its own,
    which the benchmark would count as a server worker's, and compete with
    the server for the cores; and a fork taken while a thread holds a lock
    can leave the child waiting on it for ever. The driving process reads
    the workers' figures straight from Redis and needs none of them.
    """
    from velro_cache import switches
    from velro_cache.telemetry import publisher
    from velro_cache.tiers import process

    publisher.stop()
    switches.stop()
    for state in process.live_states():
        process.discard(state)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class QueryCounter:
    """An ``execute_wrapper`` counting the SQL statements sent while it is installed.

    The benchmarks measure database load as statements (an ORM cache's hit
    sends none), so every one of them counts the same way.
    """

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, execute: Callable, sql: str, params: Any, many: bool, context: Any) -> Any:
        self.count += 1
        return execute(sql, params, many, context)


@contextmanager
def library_warnings(name: str = "velro_cache") -> Iterator[list[str]]:
    """Collect what the cache logs at WARNING or above while measuring.

    A benchmark must say when the system under test changed mode mid-run (a
    coherence channel declared lost turns L1 off), or its numbers would silently
    describe another configuration.
    """
    handler = _Collect()
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


# -- machine ----------------------------------------------------------------------------


def _redis_server_version(url: str) -> str | None:
    """The version of the server actually used, else of the installed binary."""
    import redis

    try:
        return redis.Redis.from_url(url, socket_connect_timeout=0.5).info("server")["redis_version"]
    except redis.RedisError:
        pass
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    return next((part[2:] for part in out.split() if part.startswith("v=")), out.strip() or None)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _source_state() -> str:
    """The commit measured, and whether velro_cache/ differed from it (a shared tree moves)."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown (not a git checkout)"
    dirty = git("status", "--porcelain", "--", "velro_cache")
    return f"{commit}" + (" + uncommitted changes in velro_cache/" if dirty else "")


def machine_info(redis_url: str = REDIS_URL) -> dict[str, Any]:
    """Everything a reader needs to judge whether two result files are comparable."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        # Others' work on a 2-core machine moves absolute times; this says how busy it was.
        "loadavg": [round(load, 2) for load in os.getloadavg()],
        "cpu": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "redis_server": _redis_server_version(redis_url),
        "source": _source_state(),
        "packages": versions,
    }


# -- timing ---------------------------------------------------------------------------------


@contextmanager
def gc_paused():
    """No collector pauses inside timed loops: they would land on random calls' p99."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def time_each(fn: Callable[..., Any], args: tuple, n: int, out: list[int], before: Callable[[], Any] | None = None) -> None:
    """Append the duration in ns of each of ``n`` calls ``fn(*args)`` to ``out``.

    Every call is timed on its own so tails (p99, p99.9) are real, not averaged
    away. ``before`` runs untimed ahead of each call, to reset state (e.g. force
    an L1 miss); it gets its own loop so the common case pays nothing for it.
    """
    clock = time.perf_counter_ns
    append = out.append
    if before is None:
        for _ in range(n):
            start = clock()
            fn(*args)
            append(clock() - start)
    else:
        for _ in range(n):
            before()
            start = clock()
            fn(*args)
            append(clock() - start)


def timer_floor_ns(n: int = 100_000) -> float:
    """Median cost of timing nothing: what every per-call figure includes."""
    samples: list[int] = []
    time_each(_noop, (), n, samples)
    return percentile(sorted(samples), 0.5)


def _noop() -> None:
    return None


@dataclass
class Case:
    """One thing to time: ``fn(*args)``, optionally after an untimed ``before()``."""

    fn: Callable[..., Any]
    args: tuple = ()
    before: Callable[[], Any] | None = None


def interleaved(cases: dict[str, Case], total: int, rounds: int, warmup: int = 1000) -> dict[str, list[int]]:
    """Time every case ``total`` times, in ``rounds`` alternating slices.

    Interleaving puts all cases under the same background noise (other
    processes, CPU frequency), and rotating the order each round stops any case
    from always running right after the same neighbour.
    """
    samples: dict[str, list[int]] = {name: [] for name in cases}
    names = list(cases)
    for name in names:
        case = cases[name]
        time_each(case.fn, case.args, warmup, [], case.before)
    per_round = max(1, total // rounds)
    with gc_paused():
        for index in range(rounds):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                case = cases[name]
                time_each(case.fn, case.args, per_round, samples[name], case.before)
    return samples


def percentile(sorted_samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted samples."""
    if not sorted_samples:
        return math.nan
    index = min(len(sorted_samples) - 1, max(0, math.ceil(q * len(sorted_samples)) - 1))
    return sorted_samples[index]


STAT_COLUMNS = ["median µs", "p90 µs", "p99 µs", "p99.9 µs", "mean µs"]


def summarize(samples_ns: Sequence[int]) -> dict[str, float]:
    """Median, tail percentiles and mean in microseconds, keyed by STAT_COLUMNS.

    The mean is there because a median hides costs paid once every N calls
    (batched bookkeeping, sampling): they move the mean and the far tail only.
    """
    ordered = sorted(samples_ns)
    return {
        "median µs": percentile(ordered, 0.5) / 1000,
        "p90 µs": percentile(ordered, 0.9) / 1000,
        "p99 µs": percentile(ordered, 0.99) / 1000,
        "p99.9 µs": percentile(ordered, 0.999) / 1000,
        "mean µs": (sum(ordered) / len(ordered) / 1000) if ordered else math.nan,
    }


def median_us(samples_ns: Sequence[int]) -> float:
    return summarize(samples_ns)["median µs"]


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def verdict(ok: bool) -> str:
    return PASS if ok else FAIL


# -- reports --------------------------------------------------------------------------------


@dataclass
class Table:
    """A section of a report: rows are dicts keyed by column, numbers kept raw for JSON."""

    title: str
    columns: list[str]
    rows: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)


@dataclass
class Budget:
    name: str
    ok: bool
    detail: str


def warnings_note(messages: list[str]) -> list[str]:
    """Report notes for library warnings seen while measuring (none: nothing to say)."""
    if not messages:
        return []
    counts: dict[str, int] = {}
    for message in messages:
        counts[message] = counts.get(message, 0) + 1
    lines = ["**velro_cache logged warnings while this was measured; the affected rows do not describe normal operation:**", ""]
    return lines + [f"- {count}× {message}" for message, count in counts.items()]


@dataclass
class Report:
    """One benchmark's result: written as ``<name>.md`` for people and ``<name>.json`` for tools."""

    name: str
    title: str
    intro: list[str]
    quick: bool = False
    tables: list[Table] = field(default_factory=list)
    budgets: list[Budget] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=machine_info)

    def table(self, title: str, columns: list[str], rows: list[dict[str, Any]], notes: Iterable[str] = ()) -> Table:
        table = Table(title, columns, rows, list(notes))
        self.tables.append(table)
        return table

    def budget(self, name: str, ok: bool, detail: str) -> str:
        """Record a budget check and return its PASS/FAIL mark for a table cell."""
        self.budgets.append(Budget(name, ok, detail))
        return verdict(ok)

    @property
    def missed(self) -> list[Budget]:
        return [budget for budget in self.budgets if not budget.ok]

    def markdown(self) -> str:
        lines = [f"# {self.title}" + (" (quick smoke run: too few iterations to trust)" if self.quick else ""), ""]
        lines += [*self.intro, ""]
        lines += ["## Machine", "", *_machine_lines(self.machine), ""]
        if self.budgets:
            passed = len(self.budgets) - len(self.missed)
            lines += ["## Budgets", "", f"{passed} of {len(self.budgets)} budget checks pass.", ""]
            lines += [f"- {verdict(b.ok)}: {b.name} — {b.detail}" for b in self.budgets] + [""]
        for table in self.tables:
            lines += [f"## {table.title}", "", *_table_lines(table), ""]
            if table.notes:
                lines += [*table.notes, ""]
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            "title": self.title,
            "quick": self.quick,
            "machine": self.machine,
            "budgets": [vars(b) for b in self.budgets],
            "sections": [vars(t) for t in self.tables],
        }

    def write(self, out: Path) -> tuple[Path, Path]:
        out.mkdir(parents=True, exist_ok=True)
        md, js = out / f"{self.name}.md", out / f"{self.name}.json"
        md.write_text(self.markdown())
        js.write_text(json.dumps(self.as_json(), indent=2, default=_json_default, allow_nan=False) + "\n")
        return md, js


def _json_default(value: Any) -> Any:
    return str(value)


def _machine_lines(machine: dict[str, Any]) -> list[str]:
    packages = ", ".join(f"{name} {version}" for name, version in machine["packages"].items() if version)
    return [
        f"- date: {machine['date']}",
        f"- nproc: {machine['nproc']} ({machine['cpu']}), {machine['platform']}; load average {machine.get('loadavg')}",
        f"- python: {machine['python']}",
        f"- django: {machine['packages'].get('django')}",
        f"- redis-server: {machine['redis_server'] or 'not available'}",
        f"- packages: {packages}",
        f"- velro-cache source: {machine.get('source')}",
    ]


def format_cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 100:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def _table_lines(table: Table) -> list[str]:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for row in table.rows:
        lines.append("| " + " | ".join(format_cell(row.get(column)) for column in table.columns) + " |")
    return lines


# -- command line -------------------------------------------------------------------------


def cli(name: str, doc: str, run: Callable[[argparse.Namespace], Report], argv: list[str] | None = None) -> int:
    """The command line every benchmark module shares: ``--out DIR`` and ``--quick``.

    A ``--quick`` run writes nowhere unless ``--out`` is given, so a smoke run
    never overwrites the committed results with numbers from too few iterations.
    """
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=doc.strip().splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help=f"results directory (default {RESULTS.relative_to(ROOT)}; none with --quick)")
    parser.add_argument("--quick", action="store_true", help="few iterations: checks the benchmark runs, numbers are noise")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    report = run(args)
    report.intro.append(f"Run time: {time.perf_counter() - started:.0f} s.")
    print(report.markdown())
    out = args.out if args.out is not None else (None if args.quick else RESULTS)
    if out is not None:
        for path in report.write(out):
            print(f"wrote {path}", file=sys.stderr)
    if report.missed and not args.quick:
        return EXIT_BUDGET_MISSED
    return 0


# -- values -----------------------------------------------------------------------------------


@dataclass
class GenerationRef:
    """A small custom object: not plain data, so TieredCache must hold it serialized."""

    id: int
    owner_id: int
    status: str
    prompt: str


def _record(index: int) -> dict[str, Any]:
    """A Velro generation row as an API would cache it (flat, immutable leaves)."""
    return {
        "id": 1000 + index,
        "owner": 17,
        "team": 3,
        "status": "done",
        "prompt": f"a watercolor fox at dusk, variation {index}",
        "media": f"https://media.velro.example/g/{1000 + index}.webp",
        "ms": 412.5,
        "public": True,
    }


def sample_values() -> dict[str, Any]:
    """The values every cache benchmark stores, sized like real cached data.

    Sizes are about their pickled/msgpack size, which is what a Redis or
    LocMemCache backend moves around.
    """
    tagged = [dict(_record(i), tags=["fox", "watercolor"], size=[512, 512]) for i in range(26)]
    return {
        "small str": "team:3:role:editor",
        "small dict": _record(0),
        "4 KiB str": ("Velro renders a watercolor fox at dusk. " * 103)[:4096],
        "4 KiB flat dict": {f"field_{i:02d}": f"value {i:02d} " + "x" * 40 for i in range(64)},
        "4 KiB list of 30 dicts": [_record(i) for i in range(30)],
        "4 KiB list of 26 dicts with lists": tagged,
        "object (dataclass)": GenerationRef(456, 17, "done", "a watercolor fox"),
    }
