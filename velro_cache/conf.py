"""The one settings object for the app-level ``VELRO_CACHE`` dict.

Every module reads ``velro_cache.conf.settings``; none reads
``django.conf.settings.VELRO_CACHE`` itself, so defaults and validation live
here and tests that use ``override_settings`` see the change at once.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.dispatch import receiver

DEFAULT_TTL = {
    "authorization": 900,
    "session": 600,
    "generation": 300,
    "team_membership": 1200,
    "system_config": 3600,
}

DEFAULTS: dict[str, Any] = {
    "TTL": DEFAULT_TTL,
    "DEFAULT_TTL": 300,
}

# --- Materialized views (L3): refresh settings (issue 6; checks E030-E039) ---
DEFAULTS.update(
    {
        # Refresh a view after commits that write its declared sources.
        "VIEW_REFRESH_ON_WRITE": True,
        # Seconds from the first write of a burst to its one refresh.
        "VIEW_REFRESH_DEBOUNCE": 2.0,
        # Seconds between refreshes of a view that declares no period; also the
        # TTL of cached reads of it (velro_cache.db.loaders).
        "VIEW_REFRESH_PERIOD": 300,
        # Refresh each registered view every period from a background thread
        # of the web process (cron `velro_refresh_views --stale` is the alternative).
        "VIEW_REFRESH_SCHEDULE": False,
        # Refresh log rows kept per view (velro_cache.models.ViewRefresh).
        "VIEW_REFRESH_LOG_KEEP": 1000,
    }
)
# --- end materialized views ---

# --- Keys, TTL policy and invalidation (issue 4; checks E020-E029 / W020-W029) ---
# A key's first part -> the data type whose TTL applies (a first part that is
# itself a TTL name needs no entry). Yours are merged over these.
DEFAULT_KEY_DATA_TYPES = {
    "auth": "authorization",
    "authz": "authorization",
    "gen": "generation",
    "membership": "team_membership",
    "config": "system_config",
}
DEFAULTS.update(
    {
        "KEY_DATA_TYPES": DEFAULT_KEY_DATA_TYPES,
        # Hot, stable keys live longer and often-changed ones shorter, within
        # TTL x [TTL_MIN_FACTOR, TTL_MAX_FACTOR] (velro_cache.ttl).
        "ADAPTIVE_TTL": True,
        "TTL_MIN_FACTOR": 0.5,
        "TTL_MAX_FACTOR": 4.0,
        # Each TTL is multiplied by a random 1 ± TTL_JITTER.
        "TTL_JITTER": 0.1,
        # Modules to import at startup that declare model -> cached data
        # dependencies (velro_cache.invalidation.register).
        "INVALIDATION": [],
        # The cache that cached reads and invalidations use.
        "CACHE_ALIAS": "default",
    }
)
# --- end keys, TTL policy and invalidation ---

# --- Authorization (issue 5; checks E040-E049 / W040-W049) ---
DEFAULTS.update(
    {
        # Serve authorization decisions from the cache (versions read once per
        # request from Redis). False: every check is answered by the database.
        "AUTHZ_CACHE": True,
    }
)
# --- end authorization ---


class VelroSettings:
    """Read-through view of ``VELRO_CACHE`` merged over the defaults."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    @property
    def user_settings(self) -> dict[str, Any]:
        value = getattr(django_settings, "VELRO_CACHE", {})
        return value if isinstance(value, dict) else {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in DEFAULTS:
            raise AttributeError(name)
        if name not in self._cache:
            self._cache[name] = self._resolve(name)
        return self._cache[name]

    def _resolve(self, name: str) -> Any:
        value = self.user_settings.get(name, DEFAULTS[name])
        if name == "TTL" and isinstance(value, dict):
            return {**DEFAULT_TTL, **value}
        return value

    def reload(self) -> None:
        self._cache.clear()


settings = VelroSettings()


@receiver(setting_changed)
def _reload_on_change(setting: str, **kwargs: Any) -> None:
    if setting == "VELRO_CACHE":
        settings.reload()
