"""Which cached Velro data each model feeds (imported by StudioConfig.ready).

The reads in ``studio.reads`` key their data as:

- ``generation:<id>:meta``            a generation's fields
- ``session:user:<id>:me``            /api/me/: profile and teams
- ``session:token:<digest>``          an API token's identity
- ``team_membership:user:<id>``       a user's teams and roles
- ``system_config:<key>``             one SystemConfig value

Each declaration below names the prefixes a change of one row makes stale;
velro-cache retires them when the write commits, whatever path made it
(a view's save, the admin, a cascade, the seed's bulk_create).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model

import velro_cache

from .models import ApiToken, Generation, SystemConfig, Team, TeamMembership
from .reads import token_digest


@velro_cache.register(Generation)
class GenerationCache(velro_cache.ModelCache):
    prefixes = ["generation:{pk}"]
    # Anything that lists or authorizes a team's generations tags itself with the team.
    tags = ["team:{team_id}"]


@velro_cache.register(TeamMembership)
class TeamMembershipCache(velro_cache.ModelCache):
    # The member's team list, their /me (which shows it), and what depends on the team.
    prefixes = ["team_membership:user:{user_id}", "session:user:{user_id}"]
    tags = ["team:{team_id}"]
    fields = ["team", "user", "role"]


@velro_cache.register(Team)
class TeamCache(velro_cache.ModelCache):
    """A team's name shows in every member's team list; deleting it detaches its generations."""

    prefixes = [
        "team_membership:user:{member_ids}",
        "session:user:{member_ids}",
        "generation:{generation_ids}",
    ]
    tags = ["team:{pk}"]
    fields = ["name", "slug"]

    def member_ids(self, team: Team) -> Any:
        return team.memberships.values_list("user_id", flat=True)

    def generation_ids(self, team: Team) -> Any:
        return team.generations.values_list("pk", flat=True)


@velro_cache.register(get_user_model())
class UserCache(velro_cache.ModelCache):
    """/me shows the profile; a token's identity carries the user's flags."""

    prefixes = ["session:user:{pk}", "session:token:{token_digests}"]
    fields = ["username", "email", "first_name", "last_name", "is_active", "is_staff", "is_superuser"]

    def token_digests(self, user: Any) -> list[str]:
        return [token_digest(key) for key in ApiToken.objects.filter(user_id=user.pk).values_list("key", flat=True)]


@velro_cache.register(ApiToken)
class ApiTokenCache(velro_cache.ModelCache):
    prefixes = ["session:token:{digest}"]
    # last_used_at is refreshed by the token lookup itself and changes nothing cached.
    fields = ["key", "user"]

    def digest(self, token: ApiToken) -> str:
        return token_digest(token.key)


velro_cache.register(SystemConfig, keys=["system_config:{key}"], fields=["key", "value"])
