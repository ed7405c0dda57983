"""The cache a management command's ``--cache`` names, or a clear error.

Every command that takes ``--cache`` resolves it here, so a mistyped alias
reads the same everywhere: a ``CommandError`` naming the aliases CACHES
defines, never the traceback of Django's ``InvalidCacheBackendError``.
"""

from __future__ import annotations

from django.conf import settings as django_settings
from django.core.cache import BaseCache, caches
from django.core.management.base import CommandError

from ..conf import settings


def command_cache(alias: str | None) -> tuple[str, BaseCache]:
    """``alias`` (None: ``VELRO_CACHE['CACHE_ALIAS']``) and the cache it names."""
    alias = alias or settings.CACHE_ALIAS
    if alias not in django_settings.CACHES:
        known = ", ".join(repr(name) for name in sorted(django_settings.CACHES))
        raise CommandError(f"Unknown cache alias {alias!r}; CACHES defines: {known}.")
    return alias, caches[alias]
