"""A minimal Django site for the telemetry tests: one read endpoint and ``/metrics``, no database.

Settings, URLs and views in one module (``DJANGO_SETTINGS_MODULE=tests.metrics_site``),
served by gunicorn as ``django.core.wsgi:get_wsgi_application()`` or driven as a
plain process (``python -m tests.metrics_site N``: N reads, publish, exit).
Redis and the publish interval come from the environment the test sets.
"""

from __future__ import annotations

import os
import sys

from django.http import JsonResponse
from django.urls import path

SECRET_KEY = "velro-cache-tests"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
ROOT_URLCONF = "tests.metrics_site"
INSTALLED_APPS = ["django.contrib.contenttypes", "velro_cache"]
DATABASES: dict = {}
MIDDLEWARE: list = []
CACHES = {
    "default": {
        "BACKEND": "velro_cache.backends.TieredCache",
        "LOCATION": os.environ.get("VELRO_METRICS_REDIS", "redis://127.0.0.1:6379/5"),
        "KEY_PREFIX": "velro-metrics-tests",
    }
}
VELRO_CACHE = {
    "TELEMETRY_INTERVAL": float(os.environ.get("VELRO_METRICS_INTERVAL", "0.2")),
    "READ_YOUR_WRITES": False,
    "CAPTURE_WRITES": False,
    "VIEW_REFRESH_ON_WRITE": False,
}


def read(request, key: str) -> JsonResponse:
    """One cache read (a set after a miss): what the test counts."""
    from django.core.cache import cache

    value = cache.get(key)
    if value is None:
        cache.set(key, {"key": key}, 300)
    return JsonResponse({"hit": value is not None, "pid": os.getpid()})


def _metrics(request):
    from django_prometheus.exports import ExportToDjangoView

    return ExportToDjangoView(request)


urlpatterns = [path("read/<str:key>/", read), path("metrics", _metrics)]


def main(reads: int, publish: bool) -> None:
    """A worker's life in one process: ``reads`` reads of ``gen:<i % 10>``, a publish (unless told not to), exit."""
    import django

    django.setup()
    from django.core.cache import cache

    from velro_cache.telemetry import store

    for index in range(reads):
        if cache.get(f"gen:{index % 10}") is None:
            cache.set(f"gen:{index % 10}", index, 300)
    if publish:
        assert store.publish(), "the snapshot did not reach Redis"
    print(store.worker_id(), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), publish="--no-publish" not in sys.argv)
