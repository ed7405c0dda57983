"""django-redis's own backend suite (``test_backend.py``, ``test_backend_sorted_sets.py``) on TieredCache: L1 + Redis, L1 + Cluster.

The suite comes from the source distribution of the installed django-redis
version (``make django-redis-suite``; make test does it), unmodified, as
Django's own cache suite is run in test_django_contract.py. Its ``cache``
fixture is ours: the default alias as a TieredCache on the real Redis
(database 10), and on a real three-primary Redis Cluster, under a key prefix
of the test's own.

The set, hash and sorted-set helpers (velro_cache/redis_collections.py) run
in both modes: on the cluster the suite's multi-key calls (``sdiff``,
``sinterstore``, ``smove``...) name keys in different slots, which TieredCache
computes from per-key commands (not atomic; the module says so).

Left out, by name, each for a stated reason (``NOT_RUN``):

* ``delete_many``'s return value: Django's contract (None), not django-redis's count
  (``DIFFERS_BY_DESIGN``; docs/migrating-from-django-redis.md says why);
* tests of django-redis's own classes rather than of a cache's behaviour:
  they patch ``django_redis.cache.RedisCache.client``, build a ``RedisCache``,
  or assert the exact arguments django-redis's ``DefaultClient`` passes to
  redis-py, so no other backend can pass them.
"""

from __future__ import annotations

import sys
import uuid
from importlib.metadata import version as installed_version

import pytest

from tests.redis_cluster import cluster_urls
from tests.settings import ROOT, redis_url

SUITE_DIR = ROOT / ".cache" / "django-redis-tests" / installed_version("django-redis")
if not (SUITE_DIR / "django_redis_suite" / "test_backend.py").exists():  # pragma: no cover - a setup error, not a skip
    raise RuntimeError(f"django-redis's suite is missing at {SUITE_DIR}; run `make django-redis-suite` (make test does it).")
sys.path.insert(0, str(SUITE_DIR))

from django_redis_suite import test_backend as suite  # noqa: E402
from django_redis_suite import test_backend_sorted_sets as sorted_sets_suite  # noqa: E402

SUITE_REDIS_DB = 10

DJANGO_REDIS_INTERNALS = {
    "test_set_call_empty_pipeline": "asserts the arguments DefaultClient gives a redis-py pipeline's set()",
    "test_delete_pattern_with_custom_count": "patches django_redis.cache.RedisCache.client",
    "test_delete_pattern_with_settings_default_scan_count": "patches django_redis.cache.RedisCache.client",
    "test_close_uninitialized_client": "builds a django_redis RedisCache",
    "test_close_with_signal_parameter": "patches django_redis.cache.RedisCache.client",
    "test_primary_replica_switching": "sets DefaultClient's _server/_clients on the 'sample' alias",
    "test_primary_replica_switching_with_index": "calls DefaultClient.get_client_with_index",
}
# Where TieredCache answers as Django's contract says, not as django-redis does.
DIFFERS_BY_DESIGN = {
    "test_delete_many": "delete_many returns None, as Django's BaseCache.delete_many (django-redis: a count)",
    "test_delete_many_generator": "delete_many returns None, as Django's BaseCache.delete_many (django-redis: a count)",
}
NOT_RUN = set(DJANGO_REDIS_INTERNALS) | set(DIFFERS_BY_DESIGN)


@pytest.fixture(params=["l1+redis", "l1+cluster"])
def cache(request, settings):
    """The default alias as a TieredCache (L1 + the real Redis, or a real Redis Cluster), cleared afterwards."""
    from django.core.cache import caches

    location = redis_url(SUITE_REDIS_DB) if request.param == "l1+redis" else cluster_urls()
    settings.CACHES = {
        **settings.CACHES,
        "default": {
            "BACKEND": "velro_cache.backends.TieredCache",
            "LOCATION": location,
            "KEY_PREFIX": f"djr-{uuid.uuid4().hex[:8]}",
            # The suite asserts values, not the breaker: a read that passed the
            # 0.25 s default on a loaded machine would be a (designed) miss.
            "OPTIONS": {"SOCKET_TIMEOUT": 2.0, "SOCKET_CONNECT_TIMEOUT": 2.0},
        },
    }
    default = caches["default"]
    yield default
    default.clear()


class TestTieredCacheDjangoRedisSuite(suite.TestDjangoRedisCache):
    """django-redis's core API, set and hash tests, inherited unchanged."""


class TestTieredCacheDjangoRedisSortedSets(sorted_sets_suite.TestSortedSetOperations):
    """django-redis's sorted-set tests, inherited unchanged (all of them run)."""


for _name in NOT_RUN:
    setattr(TestTieredCacheDjangoRedisSuite, _name, None)  # not a function: pytest does not collect it
