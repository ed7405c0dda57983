"""velro-cache: a multi-tier cache for Django (L1 in-process, L2 Redis, L3 materialized views)."""

__version__ = "0.1.0"

# --- Keys, cached reads and invalidation (issue 4) ---
# Exported lazily: ``import velro_cache`` must not import Django's ORM (it
# runs from settings modules, before apps are ready).
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


def __getattr__(name: str):  # noqa: ANN201 - PEP 562 module attribute hook
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'velro_cache' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


# --- end keys, cached reads and invalidation ---
