"""Who may do what to a generation, declared for velro-cache's authorization layer.

Owner > editor > viewer; reading and media need viewer, editing editor,
deleting and sharing owner. A generation's owner is its owner; a member of
its team holds their team role on it; superusers hold every role; inactive
users none. The views ask through ``request.authz`` (cached, validated
against per-user versions on every request); ``can``/``role_for`` remain for
code outside a request.
"""

from __future__ import annotations

from typing import Any

from velro_cache import authz

from .models import Generation, Role, TeamMembership


@authz.register(Generation)
class GenerationPolicy(authz.ObjectPolicy):
    key_name = "gen"
    roles = (Role.VIEWER, Role.EDITOR, Role.OWNER)
    actions = {"read": Role.VIEWER, "media": Role.VIEWER, "write": Role.EDITOR, "delete": Role.OWNER, "share": Role.OWNER}
    owner = "owner"
    # A team member holds their team role on the team's generations.
    sources = (authz.RoleSource(TeamMembership, match="team", via="team"),)


def role_for(user: Any, generation: Generation) -> str | None:
    """The strongest role the user holds on the generation, or None (from the database)."""
    return authz.role_for(user, generation)


def can(user: Any, generation: Any, action: str) -> bool:
    """Whether the user's role reaches the minimum role the action requires (cached)."""
    return authz.authorize(user, generation, action)
