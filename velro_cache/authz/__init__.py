"""Cached authorization: a declared role hierarchy, single and batch checks, no stale allow.

- ``policy``: ``ObjectPolicy``, ``RoleSource``, ``register`` (admin-style).
- ``api``: ``authorize``, ``authorize_many``, ``role_for``, explicit bumps.
- ``context``: the per-request context (versions read once per request).
- ``roles``: a user's cached role context (what their role sources confer).
- ``facts``: protected objects' cached owner and team, shared by every user.
- ``decisions``: per-(user, object) decision keys, for contexts off or too large.
- ``versions``: the per-user, global and per-model object version tokens (namespace tokens).
- ``warm``: role contexts and object facts loaded ahead (warming plans, session preloads).
- ``invalidation``: write capture -> bumps on commit.
- ``middleware`` / ``backends``: ``request.authz`` and ``user.has_perm(perm, obj)``.

See docs/authorization.md.
"""

from __future__ import annotations

from ..exceptions import AlreadyRegistered, NotRegistered
from . import invalidation  # noqa: F401  (connects bumps to every policy registered)
from .api import (
    authorize,
    authorize_many,
    invalidate_all,
    invalidate_user,
    role_for,
    scope,
)
from .context import AuthorizationContext
from .policy import (
    ObjectPolicy,
    ObjectRef,
    RoleSource,
    register,
    registry,
)
from .warm import warm_contexts, warm_objects

__all__ = [
    "AlreadyRegistered",
    "AuthorizationContext",
    "NotRegistered",
    "ObjectPolicy",
    "ObjectRef",
    "RoleSource",
    "authorize",
    "authorize_many",
    "invalidate_all",
    "invalidate_user",
    "register",
    "registry",
    "role_for",
    "scope",
    "warm_contexts",
    "warm_objects",
]
