"""Who may do what to a generation.

Kept to these two functions on purpose: velro-cache's authorization layer
(`velro_cache.authz`) replaces them, and every view asks only through `can`.
"""

from __future__ import annotations

from typing import Any, Protocol

from .models import Role
from .reads import team_memberships

ROLE_RANK = {Role.VIEWER: 1, Role.EDITOR: 2, Role.OWNER: 3}

ACTION_MIN_ROLE = {
    "read": Role.VIEWER,
    "media": Role.VIEWER,
    "write": Role.EDITOR,
    "delete": Role.OWNER,
    "share": Role.OWNER,
}


class OwnedByTeam(Protocol):
    owner_id: Any
    team_id: Any


def role_for(user: Any, generation: OwnedByTeam) -> str | None:
    """The strongest role the user holds on the generation, or None."""
    if user is None or not user.is_authenticated or not user.is_active:
        return None
    if user.is_superuser or generation.owner_id == user.pk:
        return Role.OWNER
    if generation.team_id is None:
        return None
    return _team_roles(user).get(generation.team_id)


def _team_roles(user: Any) -> dict[Any, str]:
    """The user's team roles, looked up once per user object (i.e. per request),
    so a batch check costs one lookup, with or without a cache behind it."""
    roles = getattr(user, "_studio_team_roles", None)
    if roles is None:
        roles = {m["team_id"]: m["role"] for m in team_memberships(user.pk)}
        user._studio_team_roles = roles
    return roles


def can(user: Any, generation: OwnedByTeam, action: str) -> bool:
    """Whether the user's role reaches the minimum role the action requires."""
    try:
        needed = ACTION_MIN_ROLE[action]
    except KeyError:
        raise ValueError(f"unknown action {action!r}") from None
    role = role_for(user, generation)
    return role is not None and ROLE_RANK[role] >= ROLE_RANK[needed]
