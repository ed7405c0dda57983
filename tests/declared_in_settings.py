"""A declaration module named by VELRO_CACHE["INVALIDATION"] in tests/test_declarations.py."""

from velro_cache.invalidation import registry

registry.declare_level("fromsettings:{id}")
