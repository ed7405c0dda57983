"""Settings for the Velro example project.

Everything runs embedded by default (SQLite, L1-only cache) so `make demo` works on
a fresh machine; the environment switches on the real servers:

- ``DATABASE_URL`` (``postgres://user:password@host:port/name``) -> PostgreSQL.
- ``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) -> L2 Redis, always: a Redis
  that is down when a worker starts (or later) is the circuit breaker's to handle,
  and the worker moves to L2 as soon as Redis answers. Deciding at import whether
  Redis answers would leave a worker that started during a Redis blip L1-only for
  its whole life, deaf to the other workers' writes.
- ``VELRO_EXAMPLE_L2`` -> ``off`` turns L2 off explicitly (L1-only). ``make demo``
  probes ``REDIS_URL`` once, before it starts anything, and sets it (``python -m
  example_project.redis_probe``), so the demo keeps "L2 when Redis answers, L1-only
  otherwise" without any worker deciding for itself.
- ``VELRO_DEMO_CACHE_BACKEND`` -> another cache backend (e.g. Django's LocMemCache),
  for side-by-side comparisons.
"""

import hashlib
import os
import sys
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get(
    "DJANGO_SECRET_KEY", "velro-example-insecure-key-for-local-demo-only"
)
DEBUG = os.environ.get("DJANGO_DEBUG", "1").lower() not in {"0", "false", "no", "off"}
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "velro_cache",
    "studio",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files (the admin's and the dashboard's) under gunicorn as under runserver.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "velro_cache.authz.middleware.AuthorizationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    # user.has_perm("studio.change_generation", generation) from the cached decisions.
    "velro_cache.authz.backends.CachedPermissionBackend",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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


def database_from_url(url: str) -> dict:
    """Parse ``DATABASE_URL`` by hand so the project needs no dj-database-url."""
    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql", "pgsql"}:
        raise ImproperlyConfigured(
            f"DATABASE_URL scheme {parts.scheme!r} is not supported; "
            "use postgres://user@host:port/name (or unset it for SQLite)."
        )
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")) or "postgres",
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        "OPTIONS": dict(parse_qsl(parts.query)),
        # Reconnecting per request would cost more than the cache saves.
        "CONN_MAX_AGE": 600,
        "CONN_HEALTH_CHECKS": True,
    }


def sqlite_database() -> dict:
    """SQLite tuned so the demo's concurrent clients wait for locks instead of failing."""
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": BASE_DIR / "db.sqlite3",
        "OPTIONS": {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
        "CONN_MAX_AGE": 600,
    }


DATABASE_URL = os.environ.get("DATABASE_URL", "")
DATABASES = {
    "default": database_from_url(DATABASE_URL) if DATABASE_URL else sqlite_database()
}


def redacted(url: str) -> str:
    """Hide a password embedded in a URL before it is printed."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def l2_switched_on() -> bool:
    """L2 unless ``VELRO_EXAMPLE_L2`` says off; an unknown value is an error, not a guess."""
    switch = os.environ.get("VELRO_EXAMPLE_L2", "on").strip().lower()
    if switch in {"on", "1", "true", "yes"}:
        return True
    if switch in {"off", "0", "false", "no"}:
        return False
    raise ImproperlyConfigured(f"VELRO_EXAMPLE_L2 must be 'on' or 'off', got {switch!r}.")


def cache_key_prefix(database: dict) -> str:
    """A prefix per database, so runs against SQLite and PostgreSQL that share one
    Redis never serve each other's rows (their primary keys overlap)."""
    identity = "|".join(str(database.get(k, "")) for k in ("ENGINE", "HOST", "PORT", "NAME"))
    return f"velro-example:{hashlib.sha256(identity.encode()).hexdigest()[:8]}"


def cache_settings() -> tuple[dict, str]:
    """Return the default cache configuration and a one-line description of it."""
    prefix = cache_key_prefix(DATABASES["default"])
    override = os.environ.get("VELRO_DEMO_CACHE_BACKEND")
    if override:
        config = {"BACKEND": override, "KEY_PREFIX": prefix}
        if override.endswith("LocMemCache"):
            # Its default of 300 entries would make any comparison meaningless.
            config["OPTIONS"] = {"MAX_ENTRIES": 1_000_000}
        return config, override
    config = {
        "BACKEND": "velro_cache.backends.TieredCache",
        "KEY_PREFIX": prefix,
        "OPTIONS": {"L1": {"MAX_BYTES": 64 * 1024 * 1024}},
    }
    if REDIS_URL and l2_switched_on():
        config["LOCATION"] = REDIS_URL
        return config, f"TieredCache L1 + L2 Redis at {redacted(REDIS_URL)}"
    return config, "TieredCache L1 only (VELRO_EXAMPLE_L2=off)"


REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
_default_cache, CACHE_MODE = cache_settings()
CACHES = {"default": _default_cache}
print(f"velro example: cache = {CACHE_MODE}", file=sys.stderr)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# `manage.py collectstatic` gathers them here for a real deployment; the demo
# serves them straight from the apps (WHITENOISE_USE_FINDERS) so it needs no
# collect step, under runserver and gunicorn alike.
STATIC_ROOT = BASE_DIR / "staticfiles"
WHITENOISE_USE_FINDERS = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"velro_cache": {"handlers": ["console"], "level": "INFO"}},
}
