"""Model-driven invalidation: declare once which cached data each model feeds.

- ``declarations``: ``ModelCache``, ``register`` and the registry.
- ``capture``: an execute wrapper on every connection: every write, whatever made it.
- ``signals``: capture's subscriber (precise with old rows from the database,
  coarse by table), plus pre_delete / post_delete / m2m_changed for relations.
- ``bulk``: the queryset mixin (no longer needed with capture; kept).
- ``transactions``: retire on commit; dirty reads inside a writing transaction.
- ``retirement``: retiring namespaces and keys in the cache.
- ``api``: ``invalidate()`` for raw SQL and everything else.

See docs/invalidation.md for a worked example.
"""

from __future__ import annotations

import importlib
from importlib.util import find_spec

from ..conf import settings
from ..exceptions import AlreadyRegistered, NotRegistered
from . import signals  # noqa: F401  (wires receivers to registrations)
from .api import invalidate
from .bulk import InvalidatingManager, InvalidatingQuerySet, InvalidatingQuerySetMixin, invalidating
from .declarations import ModelCache, register, registry
from .retirement import Retirement
from .transactions import dirty_namespaces


def declaration_modules() -> list[str]:
    """``VELRO_CACHE["INVALIDATION"]``: module paths (the settings parse drops bad entries; checks report them)."""
    return list(settings.INVALIDATION)


def missing_modules() -> list[str]:
    """Listed modules that do not exist (reported by the system checks, not raised at startup)."""
    missing = []
    for name in declaration_modules():
        try:
            found = find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def load_declarations() -> list[str]:
    """Import the declaration modules named in settings; returns those imported.

    A module that does not exist is left to the system check (E025); an error
    raised inside an existing module is a bug in it and propagates.
    """
    missing = set(missing_modules())
    loaded = []
    for name in declaration_modules():
        if name not in missing:
            importlib.import_module(name)
            loaded.append(name)
    return loaded


__all__ = [
    "AlreadyRegistered",
    "InvalidatingManager",
    "InvalidatingQuerySet",
    "InvalidatingQuerySetMixin",
    "ModelCache",
    "NotRegistered",
    "Retirement",
    "dirty_namespaces",
    "invalidate",
    "invalidating",
    "load_declarations",
    "register",
    "registry",
]
