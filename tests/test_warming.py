"""The warming mechanism: priorities, budgets, failures counted, L2 warmed once, workers never blocked.

Plans here are small plans of the test's own whose steps record what ran; the
caches are TieredCaches on the real Redis (two instances with their own L1
play two worker processes), and Redis faults are a redis-server of the test's
own, stopped for real. Velro's own plan on the example project is tested in
tests/test_warming_example.py.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from tests.support import eventually
from velro_cache import warming
from velro_cache.warming import L1, L2, Plan, Step


@pytest.fixture(autouse=True)
def fresh_results():
    warming.reset_results()
    yield
    warming.reset_results()


def recorder(calls: list[str], name: str, entries: int = 1):
    def step() -> int:
        calls.append(name)
        return entries

    return step


def test_steps_run_by_priority_and_ties_keep_declaration_order(make_cache):
    calls: list[str] = []
    plan = Plan([
        Step("config", recorder(calls, "config"), priority=40),
        Step("users", recorder(calls, "users"), priority=10),
        Step("generations", recorder(calls, "generations"), priority=20),
        Step("generations-too", recorder(calls, "generations-too"), priority=20),
    ])
    run = warming.warm(plan, cache=make_cache(l2=False))
    assert calls == ["users", "generations", "generations-too", "config"]
    assert [step.name for step in run.steps] == calls
    assert run.errors == 0


def test_a_failing_step_is_logged_and_counted_and_the_next_steps_still_run(make_cache, caplog):
    calls: list[str] = []

    def broken():
        yield 5
        raise RuntimeError("relation studio_active_users_24h does not exist")

    plan = Plan([Step("broken", broken, priority=1), Step("after", recorder(calls, "after"), priority=2)])
    with caplog.at_level(logging.WARNING, logger="velro_cache.warming"):
        run = warming.warm(plan, cache=make_cache(l2=False))
    broken_result = run.step("broken")
    assert broken_result.status == "failed" and broken_result.errors == 1 and broken_result.entries == 5
    assert "does not exist" in broken_result.error
    assert calls == ["after"] and run.step("after").status == "done"
    assert any("broken" in record.getMessage() and record.exc_info for record in caplog.records)


def test_a_step_past_its_budget_stops_at_its_next_batch(make_cache):
    batches_run = []

    def slow():
        for n in range(100):
            batches_run.append(n)
            time.sleep(0.02)
            yield 10

    calls: list[str] = []
    plan = Plan([Step("slow", slow, priority=1, budget=0.1), Step("next", recorder(calls, "next"), priority=2)])
    run = warming.warm(plan, cache=make_cache(l2=False))
    result = run.step("slow")
    assert result.status == "budget" and result.errors == 1
    assert 0 < len(batches_run) < 100 and result.entries == 10 * len(batches_run)
    assert calls == ["next"]


def test_steps_after_the_plans_budget_is_spent_are_not_started(make_cache):
    calls: list[str] = []

    def slow() -> int:
        time.sleep(0.15)
        return 1

    plan = Plan([Step("slow", slow, priority=1), Step("late", recorder(calls, "late"), priority=2)], budget=0.1)
    run = warming.warm(plan, cache=make_cache(l2=False))
    assert run.step("slow").status == "done"
    assert run.step("late").status == "budget" and calls == []


def test_l2_steps_run_in_one_worker_and_l1_steps_in_every_worker(make_cache):
    """Three workers start together: one fills L2 for all, each warms its own L1."""
    first = make_cache()
    workers = [first, make_cache(like=first), make_cache(like=first)]
    calls: list[str] = []
    lock = threading.Lock()

    def counted(name):
        def step() -> int:
            with lock:
                calls.append(name)
            return 1

        return step

    plan = Plan([Step("users", counted("users"), priority=1, tiers={L1}),
                 Step("memberships", counted("memberships"), priority=2, tiers={L2}),
                 Step("generations", counted("generations"), priority=3, tiers={L1, L2})], name="three-workers")
    runs = [warming.warm(plan, mode=warming.WORKER, cache=worker) for worker in workers]
    assert calls.count("users") == 3 and calls.count("generations") == 3
    assert calls.count("memberships") == 1
    assert sorted(run.step("memberships").status for run in runs) == ["done", "skipped", "skipped"]
    assert all(run.errors == 0 for run in runs)


def test_velro_warm_mode_runs_l2_steps_even_when_a_worker_holds_the_lock(make_cache):
    cache = make_cache()
    calls: list[str] = []
    plan = Plan([Step("memberships", recorder(calls, "memberships"), tiers={L2})], name="forced")
    warming.warm(plan, mode=warming.WORKER, cache=cache)
    warming.warm(plan, mode=warming.ALL, cache=cache)
    assert calls == ["memberships", "memberships"]


def test_redis_down_counts_the_l2_steps_and_still_warms_l1(own_redis, tiered_on):
    cache = tiered_on(own_redis.url(1))
    own_redis.stop()
    calls: list[str] = []
    plan = Plan([Step("users", recorder(calls, "users"), priority=1, tiers={L1}),
                 Step("memberships", recorder(calls, "memberships"), priority=2, tiers={L2})], name="down")
    run = warming.warm(plan, mode=warming.WORKER, cache=cache)
    assert calls == ["users"]
    assert run.step("users").status == "done"
    assert run.step("memberships").status == "l2_unavailable" and run.errors == 1


def test_an_l1_only_cache_has_no_l2_to_warm(make_cache):
    run = warming.warm(Plan([Step("memberships", lambda: 1, tiers={L2})]), cache=make_cache(l2=False))
    assert run.step("memberships").status == "l2_unavailable"


def test_results_report_the_last_run_per_step_and_totals(make_cache):
    cache = make_cache(l2=False)

    def fails() -> int:
        raise ValueError("boom")

    plan = Plan([Step("users", lambda: 7, priority=1, tiers={L1}), Step("bad", fails, priority=2, tiers={L1})])
    warming.warm(plan, cache=cache)
    warming.warm(plan, cache=cache)
    report = warming.results()
    assert report["runs"] == 2
    last = report["last_run"]
    assert last["entries"] == 7 and last["errors"] == 1
    by_name = {step["name"]: step for step in last["steps"]}
    assert by_name["users"]["entries"] == 7 and by_name["users"]["status"] == "done" and by_name["users"]["seconds"] >= 0
    assert by_name["bad"]["errors"] == 1 and by_name["bad"]["error"] == "ValueError: boom"
    users_total = report["totals"]["users"]
    assert (users_total["runs"], users_total["entries"], users_total["errors"]) == (2, 14, 0) and users_total["seconds"] >= 0
    assert report["totals"]["bad"]["errors"] == 2


def test_warming_in_the_background_lets_the_worker_serve_at_once():
    """The hook returns while a step is still loading; the warm-up finishes on its own."""
    release = threading.Event()
    entered = threading.Event()

    def blocking() -> int:
        entered.set()
        release.wait(10)
        return 3

    plan = Plan([Step("slow", blocking, tiers={L1})], name="background")
    thread = warming.warm_in_background(plan)
    assert entered.wait(5)
    assert thread.is_alive() and thread.daemon  # the caller is already back, serving
    release.set()
    thread.join(10)
    assert warming.results()["last_run"]["steps"][0]["entries"] == 3


def test_background_warming_without_a_plan_logs_and_never_raises(caplog):
    with caplog.at_level(logging.ERROR, logger="velro_cache.warming"):
        warming.warm_in_background("no-such-plan").join(10)
    assert any("serves cold" in record.getMessage() for record in caplog.records)


def test_the_asgi_lifespan_completes_startup_before_the_warm_up_ends():
    release = threading.Event()
    plan = Plan([Step("slow", lambda: release.wait(10) and 1, tiers={L1})], name="lifespan")
    inner_calls = []

    async def django_app(scope, receive, send):
        inner_calls.append(scope["type"])

    app = warming.lifespan(django_app, plan, triggers=False)

    async def drive() -> list[str]:
        inbox = asyncio.Queue()
        sent: list[str] = []
        for message in ({"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}):
            inbox.put_nowait(message)

        async def send(message):
            sent.append(message["type"])

        await app({"type": "lifespan"}, inbox.get, send)
        await app({"type": "http"}, inbox.get, send)
        return sent

    sent = asyncio.run(drive())
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert warming.results()["runs"] == 0  # the warm-up was still running when startup completed
    assert inner_calls == ["http"]
    release.set()
    assert eventually(lambda: warming.results()["runs"], 10) == 1  # let it finish inside this test


@pytest.mark.parametrize(
    "bad",
    [
        lambda: Step("x", lambda: 1, tiers={"l3"}),
        lambda: Step("x", lambda: 1, tiers=set()),
        lambda: Step("x", lambda: 1, budget=0),
        lambda: Plan([Step("x", lambda: 1), Step("x", lambda: 1)]),
        lambda: Plan([], budget=-1),
    ],
)
def test_malformed_plans_are_refused_when_declared(bad):
    with pytest.raises(ValueError):
        bad()


def test_an_unknown_mode_is_an_error(make_cache):
    with pytest.raises(ValueError, match="worker"):
        warming.warm(Plan([Step("x", lambda: 1)]), mode="workers", cache=make_cache(l2=False))


def test_an_unknown_step_name_is_an_error():
    with pytest.raises(KeyError, match="nope"):
        Plan([Step("x", lambda: 1)]).ordered(["nope"])
