"""What projects call: ``authorize``, ``authorize_many``, ``role_for`` and explicit bumps."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import DEFAULT_DB_ALIAS

from . import versions
from .context import (
    AuthorizationContext,
    Scope,
    activate,
    context_for,
    deactivate,
    note_bump,
)
from .policy import registry


def authorize(user: Any, obj: Any, action: str) -> bool:
    """Whether ``user`` may perform ``action`` on ``obj`` (a model instance or an ``ObjectRef``).

    Inside a request (``AuthorizationMiddleware``) it shares the request's
    context, whose versions are read once; elsewhere each call reads them.
    """
    return context_for(user).can(action, obj)


def authorize_many(user: Any, objs: Iterable[Any], action: str) -> dict[Any, bool]:
    """``{pk: allowed}`` for every object; the uncached ones of a model cost one query together."""
    return context_for(user).can_many(action, objs)


def role_for(user: Any, obj: Any) -> str | None:
    """The user's role on ``obj`` from the database (uncached: for display, admin, tests)."""
    if not getattr(user, "is_authenticated", False) or not getattr(user, "is_active", True):
        return None
    policy = registry.for_object(obj)
    return policy.roles_of(user.pk, [obj.pk])[obj.pk]


def invalidate_user(user_or_id: Any, using: str = DEFAULT_DB_ALIAS) -> None:
    """Forget the user's cached decisions on commit: for writes that send no signal (raw SQL, ``update()``)."""
    user_id = getattr(user_or_id, "pk", user_or_id)
    versions.bump_users([user_id], using)
    note_bump()


def invalidate_all(using: str = DEFAULT_DB_ALIAS) -> None:
    """Forget every cached decision on commit (a changed policy, a mass import)."""
    versions.bump_global(using)
    note_bump()


class scope:
    """One request's worth of checks outside the middleware (a task, a command): versions read once per user."""

    def __enter__(self) -> Scope:
        self._scope = Scope()
        self._token = activate(self._scope)
        return self._scope

    def __exit__(self, *exc: object) -> None:
        deactivate(self._token)


__all__ = ["AuthorizationContext", "authorize", "authorize_many", "invalidate_all", "invalidate_user", "role_for", "scope"]
