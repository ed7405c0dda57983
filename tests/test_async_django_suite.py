"""Django's own cache contract (``BaseCacheTests``) run through TieredCache's async methods.

``tests.async_bridge`` answers every sync call the suite makes with the
native ``a*`` method, on an event loop of its own, over L1 + the real Redis
(database 13), and over L1 + the real three-primary Redis Cluster
(``tiers.acluster``). Django's ``tests_async.py`` is for DummyCache only (it asserts
that nothing is stored), so the async contract is pinned here instead; the
same exclusions as ``test_django_contract.py`` apply.
"""

from django.conf import settings
from django.test import TestCase, override_settings

from tests.redis_cluster import cluster_urls
from tests.settings import redis_url

if not settings.HAVE_DJANGO_SUITE:  # pragma: no cover - a setup error, not a skip
    raise RuntimeError(f"Django's cache test suite is missing at {settings.DJANGO_SUITE_DIR}; run `make django-suite`.")

from cache.tests import BaseCacheTests, caches_setting_for_tests  # noqa: E402

BACKEND = "tests.async_bridge.AsyncBridgedTieredCache"


# A key prefix, so the suite's clear() deletes by SCAN instead of FLUSHDB: a
# flush makes every process distrust Redis's answers for the staleness bound
# (tiers.coherence, the epoch), sync and async alike, and the bridge's slower
# calls would land inside that window. The "prefix" alias keeps its own.
SETTINGS = caches_setting_for_tests(
    base={"KEY_PREFIX": "aio-suite"}, BACKEND=BACKEND, exclude={"cull", "zero_cull"}, LOCATION=redis_url(13)
)


@override_settings(CACHES=SETTINGS)
class TieredCacheAsyncDjangoSuite(BaseCacheTests, TestCase):
    """L1 + the real Redis, every call through the async API."""


@override_settings(
    CACHES=caches_setting_for_tests(
        base={"KEY_PREFIX": "aio-suite-cluster"}, BACKEND=BACKEND, exclude={"cull", "zero_cull"}, LOCATION=cluster_urls()
    )
)
class TieredCacheClusterAsyncDjangoSuite(BaseCacheTests, TestCase):
    """L1 + a real Redis Cluster, every call through the async API."""
