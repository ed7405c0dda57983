"""Django settings of the gunicorn server ``benchmarks.traffic`` drives: the example project, one caching arm.

``VELRO_TRAFFIC_ARM`` picks what caches (the rest is the example project
unchanged, on the benchmark's PostgreSQL database, ``DEBUG`` off):

- ``off``: no caching (``DummyCache`` under the app's read-through helpers and
  authorization decisions).
- ``velro`` / ``velro_warm``: TieredCache (L1 + Redis L2), the example's
  read-through and cached authorization; ``velro_warm`` adds the warming
  plan at each worker's start (gunicorn ``post_worker_init``, set in the
  command line's config) and the runtime session preloads.
- ``cachalot``: django-cachalot as its docs recommend (in ``INSTALLED_APPS``,
  a Redis cache for it, every table cached), the app's own caching off.
- ``cacheops``: django-cacheops as its docs recommend (``CACHEOPS_REDIS``,
  ``ops: all`` for the app's and auth's models), the app's own caching off.

``benchmarks.traffic_server.CountingMiddleware`` (outermost) reports each
request's SQL statements and read-through hits in response headers.
"""

import os

from example_project.settings import *  # noqa: F403
from example_project.settings import INSTALLED_APPS, MIDDLEWARE

ARM = os.environ.get("VELRO_TRAFFIC_ARM", "off")
REDIS = os.environ.get("VELRO_TRAFFIC_REDIS_URL", "redis://127.0.0.1:6379/14")
ARMS = ("off", "velro", "velro_warm", "cachalot", "cacheops")
if ARM not in ARMS:
    raise RuntimeError(f"VELRO_TRAFFIC_ARM must be one of {ARMS}, got {ARM!r}")

DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("VELRO_TRAFFIC_DB", "velro_cache_bench_traffic"),
        "HOST": os.environ.get("VELRO_BENCH_PG_HOST", "127.0.0.1"),
        "PORT": os.environ.get("VELRO_BENCH_PG_PORT", "5432"),
        "USER": os.environ.get("VELRO_BENCH_PG_USER", "postgres"),
        "PASSWORD": os.environ.get("VELRO_BENCH_PG_PASSWORD", ""),
        "CONN_MAX_AGE": 600,
    }
}
MIDDLEWARE = ["benchmarks.traffic_server.CountingMiddleware", *MIDDLEWARE]
LOGGING = {"version": 1, "disable_existing_loggers": False, "loggers": {"django.request": {"level": "ERROR"}}}

OFF = {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}
STUDIO_SESSION_PRELOAD = ARM == "velro_warm"
VELRO_CACHE = {"VIEW_REFRESH_ON_WRITE": False, "TELEMETRY_INTERVAL": 0.5}

if ARM in ("velro", "velro_warm"):
    CACHES = {"default": {"BACKEND": "velro_cache.backends.TieredCache", "LOCATION": REDIS,
                          "KEY_PREFIX": "bench-traffic", "OPTIONS": {"L1": {"MAX_BYTES": 64 * 1024 * 1024}}}}
elif ARM == "cachalot":
    INSTALLED_APPS = [*INSTALLED_APPS, "cachalot"]
    # Its docs: django-redis as the cache (or memcached), every app cached, invalidation by table.
    CACHES = {"default": OFF, "cachalot": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": REDIS}}
    CACHALOT_CACHE = "cachalot"
    CACHALOT_TIMEOUT = 60 * 60
elif ARM == "cacheops":
    INSTALLED_APPS = [*INSTALLED_APPS, "cacheops"]
    CACHES = {"default": OFF}
    CACHEOPS_REDIS = REDIS
    CACHEOPS_DEFAULTS = {"timeout": 60 * 60}
    CACHEOPS = {"auth.*": {"ops": "all"}, "studio.*": {"ops": "all"}}
    CACHEOPS_DEGRADE_ON_FAILURE = True
else:
    CACHES = {"default": OFF}
