"""Settings for the test suite: the real PostgreSQL and the real Redis on loopback.

Each suite uses its own Redis database number so parallel runs of different
suites never clear each other's keys.
"""

import os
import sys
from pathlib import Path

import django

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "example_project"))

# Django's own cache suite (fetched by `make django-suite`) is the app "cache".
DJANGO_SUITE_DIR = ROOT / ".cache" / "django-tests" / django.__version__
HAVE_DJANGO_SUITE = (DJANGO_SUITE_DIR / "cache" / "tests.py").exists()
if HAVE_DJANGO_SUITE:
    sys.path.insert(0, str(DJANGO_SUITE_DIR))

SECRET_KEY = "velro-cache-tests"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "example_project.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_HOST = os.environ.get("VELRO_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("VELRO_TEST_REDIS_PORT", "6379"))


def redis_url(db: int) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "velro_cache",
    "studio",
] + (["cache"] if HAVE_DJANGO_SUITE else [])

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "velro_cache.authz.middleware.AuthorizationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    # user.has_perm("studio.change_generation", generation) from the cached decisions.
    "velro_cache.authz.backends.CachedPermissionBackend",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("VELRO_TEST_PG_NAME", "postgres"),
        "USER": os.environ.get("VELRO_TEST_PG_USER", "postgres"),
        "HOST": os.environ.get("VELRO_TEST_PG_HOST", "127.0.0.1"),
        "PORT": os.environ.get("VELRO_TEST_PG_PORT", "5432"),
        # One test database per Python version, so matrix legs can run side by side.
        "TEST": {"NAME": os.environ.get("VELRO_TEST_DB_NAME", f"velro_cache_test_py{sys.version_info[0]}{sys.version_info[1]}")},
    }
}

CACHES = {
    "default": {
        "BACKEND": "velro_cache.backends.TieredCache",
        "LOCATION": redis_url(12),
        "KEY_PREFIX": "velro-tests",
    },
    "l1only": {
        "BACKEND": "velro_cache.backends.TieredCache",
        "KEY_PREFIX": "velro-tests-l1",
    },
}

# Other suites' committed writes must not start background view refreshes that
# could hold a connection while pytest drops the test database; the
# materialized-view tests turn it on where they test it.
# No telemetry publisher thread either: tests that count keys or commands on
# their Redis must not see its snapshots; the telemetry tests publish by hand.
VELRO_CACHE = {"VIEW_REFRESH_ON_WRITE": False, "TELEMETRY_INTERVAL": 0}
