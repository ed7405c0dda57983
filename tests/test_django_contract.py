"""Django's own cache test suite (``tests/cache/tests.py``, ``BaseCacheTests``)
run against TieredCache in its three modes: L1 only, L1 + Redis, L1 + Redis Cluster.

The suite comes from the source distribution of the installed Django version
(``make django-suite``). Like Django's Redis and memcached backends, TieredCache
leaves out the ``cull`` and ``zero_cull`` aliases: they test LocMemCache's
entry-count culling (``MAX_ENTRIES``), and TieredCache's L1 is bounded by bytes
instead (covered in test_memory_store.py and test_backend.py). The suite then
skips its three culling tests itself, exactly as it does for Redis.
"""

from django.conf import settings
from django.test import TestCase, override_settings

from tests.redis_cluster import cluster_urls
from tests.settings import redis_url

if not settings.HAVE_DJANGO_SUITE:  # pragma: no cover - a setup error, not a skip
    raise RuntimeError(
        f"Django's cache test suite is missing at {settings.DJANGO_SUITE_DIR}; run `make django-suite` "
        "(make test does it)."
    )

from cache.tests import BaseCacheTests, caches_setting_for_tests  # noqa: E402

BACKEND = "velro_cache.backends.TieredCache"
EXCLUDED = {"cull", "zero_cull"}


@override_settings(CACHES=caches_setting_for_tests(BACKEND=BACKEND, exclude=EXCLUDED))
class TieredCacheL1OnlyDjangoSuite(BaseCacheTests, TestCase):
    """No LOCATION: the L1 alone must honour the whole contract."""


@override_settings(CACHES=caches_setting_for_tests(BACKEND=BACKEND, exclude=EXCLUDED, LOCATION=redis_url(11)))
class TieredCacheL1L2DjangoSuite(BaseCacheTests, TestCase):
    """L1 + the real Redis (database 11)."""


@override_settings(CACHES=caches_setting_for_tests(BACKEND=BACKEND, exclude=EXCLUDED, LOCATION=cluster_urls()))
class TieredCacheClusterDjangoSuite(BaseCacheTests, TestCase):
    """L1 + a real three-primary Redis Cluster (started when this module is collected)."""
