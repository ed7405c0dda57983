"""Starting threads together, for tests that need real interleaving."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def run_together(count: int, target: Callable[[int], Any]) -> list:
    """Start ``count`` threads at one barrier; return their results in order."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def run(index: int) -> None:
        barrier.wait()
        results[index] = target(index)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results
