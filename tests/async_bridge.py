"""A TieredCache whose sync methods run its async twins: how Django's own suite tests the async API.

Django's ``BaseCacheTests`` pins the whole cache contract through the sync
methods, and Django ships no such suite for async (its ``tests_async.py``
covers DummyCache only). ``AsyncBridgedTieredCache`` answers each sync call
by running the matching ``a*`` method with ``async_to_sync``, as a sync
caller of async code does in Django: each call runs on a new event loop
(which also exercises the per-loop Redis clients), and what the async code
hands to ``sync_to_async`` (thread-sensitive) runs back in the test's own
thread, inside its transaction. Every assertion of the suite is thus made
against the async code path (L1 + Redis: that is where the async path has its own
I/O; in L1-only mode the async methods are the sync ones).
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync

from velro_cache.backends import TieredCache


def _bridged(name: str):
    def call(self, *args: Any, **kwargs: Any) -> Any:
        return async_to_sync(getattr(self, "a" + name))(*args, **kwargs)

    call.__name__ = name
    return call


class AsyncBridgedTieredCache(TieredCache):
    """Every sync method of Django's cache API answered by its native async counterpart."""

    for _name in ("get", "set", "add", "touch", "delete", "get_many", "set_many", "delete_many",
                  "has_key", "incr", "decr", "clear", "get_or_set", "incr_version", "decr_version", "close"):
        locals()[_name] = _bridged(_name)
    del _name
