"""velro-cache: a multi-tier cache for Django (L1 in-process, L2 Redis, L3 materialized views)."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Exported lazily: ``import velro_cache`` must not import Django's ORM (it
# runs from settings modules, before apps are ready). A type checker never
# runs ``__getattr__``, so the same names are imported for it below.
_LAZY = {
    "build_key": "velro_cache.keys",
    "parse_key": "velro_cache.keys",
    "cached_read": "velro_cache.reads",
    "cached_read_many": "velro_cache.reads",
    "ttl_for": "velro_cache.ttl",
    "invalidate": "velro_cache.invalidation",
    "invalidating": "velro_cache.invalidation",
    "register": "velro_cache.invalidation",
    "ModelCache": "velro_cache.invalidation",
    "InvalidatingManager": "velro_cache.invalidation",
    "InvalidatingQuerySet": "velro_cache.invalidation",
    "InvalidatingQuerySetMixin": "velro_cache.invalidation",
}

if TYPE_CHECKING:
    from velro_cache.invalidation import (
        InvalidatingManager,
        InvalidatingQuerySet,
        InvalidatingQuerySetMixin,
        ModelCache,
        invalidate,
        invalidating,
        register,
    )
    from velro_cache.keys import build_key, parse_key
    from velro_cache.reads import cached_read, cached_read_many
    from velro_cache.ttl import ttl_for

__all__ = [
    "InvalidatingManager",
    "InvalidatingQuerySet",
    "InvalidatingQuerySetMixin",
    "ModelCache",
    "__version__",
    "build_key",
    "cached_read",
    "cached_read_many",
    "invalidate",
    "invalidating",
    "parse_key",
    "register",
    "ttl_for",
]


if not TYPE_CHECKING:  # hidden from type checkers, so a misspelt export is an error there

    def __getattr__(name: str) -> object:
        """Import an export's module on first use (PEP 562), then keep the value as a plain attribute."""
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'velro_cache' has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
