"""A minimal ASGI Django project for ``test_async_asgi.py``: async views that read and write the cache.

Served by ``uvicorn tests.asgi_app:application``; the cache's Redis and key
prefix come from ``VELRO_ASGI_REDIS_URL`` and ``VELRO_ASGI_PREFIX``, so the
test process can use the same cache as another process.
"""

from __future__ import annotations

import os

import django
from django.conf import settings

settings.configure(
    SECRET_KEY="velro-cache-tests",
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["127.0.0.1"],
    CACHES={
        "default": {
            "BACKEND": "velro_cache.backends.TieredCache",
            "LOCATION": os.environ["VELRO_ASGI_REDIS_URL"],
            "KEY_PREFIX": os.environ["VELRO_ASGI_PREFIX"],
        }
    },
    INSTALLED_APPS=["velro_cache"],
)
django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402
from django.core.cache import cache  # noqa: E402
from django.http import JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402


async def read(request):
    """The key's value as this worker's cache serves it (L1 first), and whether its L1 held it."""
    key = request.GET["key"]
    held = cache.make_key(key) in cache._l1
    return JsonResponse({"value": await cache.aget(key), "pid": os.getpid(), "from_l1": held})


async def write(request):
    await cache.aset(request.GET["key"], request.GET["value"], 300)
    return JsonResponse({"ok": True, "pid": os.getpid()})


async def load(request):
    """aget_or_set with a loader that records its runs in a file (one line per run)."""
    key, log = request.GET["key"], request.GET["log"]

    def loader():
        with open(log, "a") as out:
            out.write(f"{os.getpid()}\n")
        return "loaded"

    return JsonResponse({"value": await cache.aget_or_set(key, loader, 300)})


urlpatterns = [path("read", read), path("write", write), path("load", load)]
application = get_asgi_application()
