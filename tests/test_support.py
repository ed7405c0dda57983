"""The test helpers themselves: a helper thread's or worker process's failure reaches its test."""

from __future__ import annotations

import threading

import pytest

from tests.cache_worker import Worker
from tests.support import Arrivals, Background, WorkerError, eventually, run_together

pytestmark = pytest.mark.django_db(databases=[])


def test_a_helper_threads_exception_is_raised_by_join():
    def fails():
        raise KeyError("in the helper thread")

    with pytest.raises(KeyError, match="in the helper thread"):
        Background(fails).join()


def test_a_helper_thread_that_never_ends_is_an_error():
    release = threading.Event()
    thread = Background(lambda: release.wait(10))
    try:
        with pytest.raises(AssertionError, match="still running"):
            thread.join(timeout=0.05)
    finally:
        release.set()
    assert thread.join() is True


def test_run_together_overlaps_every_thread_and_reraises():
    inside = Arrivals(4)

    def meet(index):
        inside.arrive()
        inside.wait(5)  # passes only if all four are running at once
        return index

    assert run_together(4, meet) == [0, 1, 2, 3]
    with pytest.raises(ZeroDivisionError):
        run_together(3, lambda index: 1 / (index - 1))


def test_arrivals_say_who_did_not_come():
    arrivals = Arrivals(2)
    arrivals.arrive()
    with pytest.raises(AssertionError, match="only 1 of 2"):
        arrivals.wait(0.05)


def test_eventually_returns_the_first_truthy_result_or_the_last_falsy_one():
    calls = iter([0, None, "found"])
    assert eventually(lambda: next(calls)) == "found"
    assert eventually(lambda: [], limit=0.02) == []


@pytest.fixture
def worker(private_redis):
    started = Worker(private_redis.url(3), "support")
    yield started
    if started.process.poll() is None:
        started.stop()


def test_a_worker_exception_fails_the_test_with_its_traceback(worker):
    with pytest.raises(WorkerError, match=r"(?s)Traceback.*_handle.*RuntimeError: boom"):
        worker.call(op="raise", message="boom")
    assert worker.call(op="set", key="k", value="still serving") is True


def test_a_worker_that_dies_fails_the_test_with_its_stderr(worker):
    with pytest.raises(WorkerError, match=r"(?s)exited with 3.*dying on purpose"):
        worker.call(op="exit", status=3, message="dying on purpose")
