"""Run one history: servers, proxy, worker processes, a fault on schedule, then the checker's verdict.

Shared by ``tests/test_history.py`` (short histories, CI) and
``benchmarks/histories.py`` (the same histories, longer). Everything here
is real: two redis-servers this run starts on free ports (the cache's, which
the fault hits, and a control one for the version counter, which nothing
hits), a ``TcpProxy`` every cache connection passes through, and worker OS
processes (``tests.history.worker``), each a TieredCache with its own L1.

The schedule, on the shared CLOCK_MONOTONIC: every worker starts at the same
instant (``start_at``, sent to all of them: a start line, not a sleep race),
runs ``lead`` seconds of normal traffic, the fault is injected and held
``hold`` seconds, recovered, and ``tail`` seconds of traffic follow, so a
history shows the fault's onset, its duration and the recovery.

The cluster faults (``Fault.on_cluster``) run on a three-primary Redis
Cluster of their own instead (no proxy: the cluster's redirections name the
nodes themselves). The keys are chosen so every primary owns some, and the
fault hits a primary the listeners do not subscribe through (they subscribe
through the first startup node).
"""

from __future__ import annotations

import json
import random
import signal
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.history.checker import Stale, Verdict, check
from tests.history.faults import FAULTS, Target, resurrections
from tests.history.worker import DEFAULT_MIX
from tests.redis_cluster import LocalCluster
from tests.redis_server import RedisServer
from tests.support import WorkerProcess
from tests.tcp_proxy import TcpProxy

PREFIX = "history"
DEFAULT_KEYS = 4  # few keys: writers and readers collide on them all the time
START_SLACK = 0.3  # seconds between sending "run" and the common start: every worker has it by then


@dataclass
class Plan:
    """What one history does; everything random in it derives from ``seed``, so a plan can be replayed."""

    fault: str
    seed: int
    workers: int = 4
    writers: int = 2  # workers 0..writers-1 write and read; the others only read
    threads: int = 2  # per worker process, sharing its L1 (a threaded web worker)
    keys: int = 0  # 0: the fault's choice (FAULTS[fault].keys), else DEFAULT_KEYS
    lead: float = 0.6
    hold: float = 1.2
    tail: float = 0.6
    pause: float = 0.001  # at most this long between two operations of one worker
    proxied: bool = True  # through the TcpProxy (needed by silent-socket); False: straight to redis-server
    mix: dict[str, int] = field(default_factory=dict)  # empty: the fault's choice (FAULTS[fault].mix), else DEFAULT_MIX

    def __post_init__(self) -> None:
        self.keys = self.keys or FAULTS[self.fault].keys or DEFAULT_KEYS
        self.mix = self.mix or dict(FAULTS[self.fault].mix or DEFAULT_MIX)

    @classmethod
    def randomized(cls, seed: int, **overrides: Any) -> Plan:
        """A plan whose fault, mix, keys, pacing and timing are drawn from ``seed``."""
        rng = random.Random(seed)
        fault = rng.choice(sorted(FAULTS))
        plan = cls(
            fault=fault,
            seed=seed,
            workers=rng.randint(3, 4),
            writers=rng.randint(1, 2),
            threads=rng.randint(1, 3),
            keys=FAULTS[fault].keys or rng.randint(3, 5),
            lead=rng.uniform(0.4, 1.0),
            hold=rng.uniform(0.8, 1.8),
            tail=rng.uniform(0.5, 1.0),
            pause=rng.choice([0.0, 0.0005, 0.002]),
            mix={kind: rng.randint(0 if kind.endswith("_many") else 1, 20) for kind in DEFAULT_MIX},
        )
        for name, value in overrides.items():
            setattr(plan, name, value)
        return plan


@dataclass
class Outcome:
    """A history's verdict, with the fault's instants and what the workers raised."""

    plan: Plan
    verdict: Verdict
    injected: float
    recovered: float
    marks: dict[str, float]
    errors: list[str]
    hits: int
    worker_stats: list[dict[str, Any]]

    @property
    def window(self) -> tuple[float, float]:
        return self.injected, self.recovered

    def resurrected(self) -> list[Stale]:
        return resurrections(self.verdict, self.marks, self.recovered)

    def within_fault(self) -> list[Stale]:
        """Stale reads that started between injection and one second after recovery."""
        return self.verdict.stale_within(self.injected, self.recovered + 1.0)

    def timeline(self) -> str:
        """The fault's instants on the workers' clock, so a stale read can be placed against them."""
        instants = {"injected": self.injected, **self.marks, "recovered": self.recovered}
        return "timeline: " + ", ".join(f"{name} {at:.4f}" for name, at in sorted(instants.items(), key=lambda kv: kv[1]))

    def describe(self) -> str:
        plan = self.plan
        return (
            f"fault {plan.fault!r}, seed {plan.seed} (replay: VELRO_HISTORY_SEED={plan.seed}), {plan.workers} workers, "
            f"{plan.keys} keys, fault held {plan.hold:.2f} s; {self.hits} reads hit; {len(self.errors)} errors raised\n"
            + self.timeline() + "\n"
            + self.verdict.summary()
            + ("\n  first error:\n" + self.errors[0] if self.errors else "")
        )


def start_workers(url: str, control_url: str, count: int) -> list[WorkerProcess]:
    """Started together (each imports Django, most of its start-up), then awaited."""
    workers = [WorkerProcess("tests.history.worker", url, control_url, PREFIX, str(number)) for number in range(count)]
    for worker in workers:
        worker.wait_ready()
    return workers


def warm(workers: list[WorkerProcess]) -> None:
    """One call in each before the clock starts.

    A first call builds the cache's clients (a cluster's slot map) and waits
    for its listener's subscription: up to seconds on a loaded machine, which
    must not eat the history's lead (a history of misses judges nothing).
    """
    for worker in workers:
        worker.call(op="warm")


def run_history(plan: Plan, workdir: Path | None = None) -> Outcome:
    """Run ``plan`` against servers of its own and return the checker's verdict."""
    with ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="velro-history-")))
        (workdir / "control").mkdir(parents=True, exist_ok=True)
        control = RedisServer(workdir / "control")
        control.start()
        stack.callback(control.stop)
        if FAULTS[plan.fault].on_cluster:
            return _run_on_cluster(plan, workdir, control, stack)
        server = RedisServer(workdir)
        server.start()
        stack.callback(server.stop)
        stack.callback(server.resume)  # a failing stop fault must not leave it frozen
        proxy = TcpProxy(server.port)
        stack.callback(proxy.stop)
        stack.callback(proxy.release)
        workers = start_workers(proxy.url(0) if plan.proxied else server.url(0), control.url(0), plan.workers)
        for worker in workers:
            stack.callback(worker.stop)
        warm(workers)
        return _drive(plan, Target(server, proxy, workdir), workers, [f"k{n}" for n in range(plan.keys)])


def _run_on_cluster(plan: Plan, workdir: Path, control: RedisServer, stack: ExitStack) -> Outcome:
    """The cluster half of ``run_history``: its own three primaries, keys on each, a victim not subscribed through."""
    (workdir / "cluster").mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster(workdir / "cluster", full_coverage=False).start()
    stack.callback(cluster.stop)
    for node in cluster.nodes:  # a failing stop fault must not leave a node frozen (kill needs it running)
        stack.callback(lambda node=node: node.process and node.process.send_signal(signal.SIGCONT))
    keys, owners = names_on_every_primary(cluster, plan.keys)
    victim = max(cluster.nodes[1:], key=lambda node: owners.count(node.port))  # nodes[0]: where listeners subscribe
    workers = start_workers(",".join(cluster.urls), control.url(0), plan.workers)
    for worker in workers:
        stack.callback(worker.stop)
    warm(workers)
    return _drive(plan, Target(None, None, workdir, cluster=cluster, victim=victim), workers, keys)


def names_on_every_primary(cluster: LocalCluster, count: int) -> tuple[list[str], list[int]]:
    """``count`` key names spread over the primaries (round robin), and the port of each one's owner.

    Hashed as the worker's cache names them (``PREFIX:1:name``, Django's key
    format), so the fault's node certainly owns keys the workers use.
    """
    client = cluster.client()
    try:
        ports = [node.port for node in cluster.nodes]
        chosen: list[str] = []
        owners: list[int] = []
        number = 0
        while len(chosen) < count:
            name = f"k{number}"
            number += 1
            owner = client.get_node_from_key(f"{PREFIX}:1:{name}").port
            if owner == ports[len(chosen) % len(ports)]:
                chosen.append(name)
                owners.append(owner)
        return chosen, owners
    finally:
        client.close()


def _drive(plan: Plan, target: Target, workers: list[WorkerProcess], keys: list[str]) -> Outcome:
    fault = FAULTS[plan.fault]
    start_at = time.monotonic() + START_SLACK
    until = start_at + plan.lead + plan.hold + plan.tail
    outs = [target.workdir / f"worker-{number}.json" for number in range(len(workers))]
    inject_at = start_at + plan.lead
    quiet = [inject_at - fault.quiet, inject_at] if fault.quiet else None
    for number, (worker, out) in enumerate(zip(workers, outs, strict=True)):
        worker.send(op="run", keys=keys, seed=plan.seed, mix=plan.mix, writes=number < plan.writers,
                    threads=plan.threads, pause=plan.pause, quiet=quiet, start_at=start_at, until=until, out=str(out))
    time.sleep(max(0.0, inject_at - time.monotonic()))
    injected = time.monotonic()
    fault.inject(target, plan.hold)
    fault.hold(target, plan.hold)
    fault.recover(target)
    recovered = time.monotonic()
    for worker in workers:
        worker.receive()
    stats = [worker.call(op="stats") for worker in workers]
    events: list[Any] = []
    errors: list[str] = []
    for out in outs:
        recorded = json.loads(out.read_text())
        events += recorded["events"]
        errors += recorded["errors"]
    verdict = check(events)
    hits = sum(1 for event in events if event[0] == "r" and event[2] is not None)
    return Outcome(plan, verdict, injected, recovered, dict(target.marks), errors, hits, stats)
