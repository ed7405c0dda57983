"""Role contexts: what one user holds through every role source, cached once per user version.

Per-(user, object) decisions (``authz.decisions``) only help when a user
checks the same object again; on real traffic most pairs are seen once. A
role context caches the user's side of the hierarchy instead: their
``is_active``/``is_superuser`` and, per role source of a policy, the rank each
matched value confers (team 7 -> editor). Combined with an object's cached
facts (``authz.facts``: its owner and team) it decides a check on an object
this user never checked, in the process, without a query.

The no-stale-allow guarantee is the decisions' own: a context is cached under
``auth:user:<id>:v:<user token>:<global token>:ctx:<model>:<policy fingerprint>``,
the same prefix as the user's decisions, so every path that retires the
user's decisions (a membership saved, deleted or updated in bulk, a flag
changed, raw SQL, a policy changed in settings, a Redis restored from an
older snapshot) retires the context with them. The tokens are read before
the context is read from the database; a context read before a revoke is
stored under the token the revoke retired.

Bounded size: a user who holds more than ``VELRO_CACHE["AUTHZ_CONTEXT_MAX_ROWS"]``
role-source rows for a policy (members of thousands of teams, objects shared
one by one) gets a small ``too large`` marker instead, and their checks go
through per-object decisions as before. The load reads at most that many
rows plus one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import F

from ..conf import settings
from ..keys import SEPARATOR, build_key
from ..ttl import ttl_for
from .policy import ObjectPolicy

USER_FLAGS = (("is_active", True), ("is_superuser", False))  # flag, value for user models without it
TOO_LARGE = "too_large"


class RoleContext:
    """A user's flags and, per role source, matched value -> the rank it confers."""

    __slots__ = ("active", "superuser", "ranks")

    def __init__(self, active: bool, superuser: bool, ranks: Sequence[dict[Any, int]]) -> None:
        self.active, self.superuser, self.ranks = active, superuser, list(ranks)

    def rank_on(self, policy: ObjectPolicy, user_id: Any, facts: Sequence[Any]) -> int:
        """The user's rank on the object these facts describe; mirrors ``ObjectPolicy._role_from_row``."""
        if not self.active:
            return 0
        if self.superuser:
            return policy.rank(policy.top_role)
        pk, owner_id, *vias = facts
        best = policy.rank(policy.owner_role) if policy.owner and owner_id is not None and owner_id == user_id else 0
        via_values = iter(vias)
        for source, ranks in zip(policy.sources, self.ranks):
            value = pk if source.via == "pk" else next(via_values)
            if value is not None:
                best = max(best, ranks.get(value, 0))
        return best

    def encode(self) -> dict[str, Any]:
        """Plain data (string keys, lists of pairs) so every codec stores it as it is."""
        return {"active": self.active, "superuser": self.superuser, "sources": [list(map(list, ranks.items())) for ranks in self.ranks]}

    @classmethod
    def decode(cls, value: Any, policy: ObjectPolicy) -> RoleContext | None:
        """The context a cached value holds; None for a value of another shape (a miss)."""
        try:
            active, superuser, sources = bool(value["active"]), bool(value["superuser"]), value["sources"]
            if active and not superuser and len(sources) != len(policy.sources):
                return None
            return cls(active, superuser, [{match: rank for match, rank in pairs} for pairs in sources])
        except (KeyError, TypeError, ValueError):
            return None


def context_key(prefix: str, policy: ObjectPolicy) -> str:
    # decisions.key_prefix + ":" + parts, like decision keys (which have four parts after the prefix, this three).
    return prefix + SEPARATOR + build_key("ctx", policy.key_name, policy.fingerprint)


def from_database(policy: ObjectPolicy, user_id: Any, limit: int) -> RoleContext | None:
    """The user's context (one query for the flags, one per role source), or None over ``limit`` rows."""
    active, superuser = _flags(user_id)
    if not active or superuser:
        return RoleContext(active, superuser, [])  # the sources cannot change the answer
    ranks: list[dict[Any, int]] = []
    rows_read = 0
    for source in policy.sources:
        translation = source.translation(policy)
        rows = list(
            source.model._base_manager.filter(**{source.user: user_id})
            .annotate(_authz_match=F(source.match_attname()), _authz_role=F(source.role))
            .values_list("_authz_match", "_authz_role")[: limit - rows_read + 1]
        )
        rows_read += len(rows)
        if rows_read > limit:
            return None
        best: dict[Any, int] = {}
        for match, role in rows:
            best[match] = max(best.get(match, 0), policy.rank(translation.get(role)))
        ranks.append(best)
    return RoleContext(active, superuser, ranks)


def _flags(user_id: Any) -> tuple[bool, bool]:
    """The user's ``is_active``/``is_superuser`` from the database (a deleted user: inactive)."""
    user_model = get_user_model()
    names = {field.name for field in user_model._meta.concrete_fields}
    present = [name for name, _ in USER_FLAGS if name in names]
    row = user_model._base_manager.filter(pk=user_id).values(*present, _authz_user=F("pk")).first()
    if row is None:
        return False, False
    active, superuser = (bool(row.get(name, fallback)) for name, fallback in USER_FLAGS)
    return active, superuser


def cached_or_loaded(
    cache: Any,
    prefix: str,
    policy: ObjectPolicy,
    user_id: Any,
    found: Mapping[str, Any] | None = None,
    stores: dict[str, Any] | None = None,
) -> RoleContext | None:
    """The user's context from the cache, else from the database and then cached; None when too large.

    ``found``: what a ``get_many`` already read (``AuthorizationContext`` reads
    the context and the objects' facts in one round trip); ``stores``: where
    to put a loaded context for the caller to store with the facts, in one
    round trip too. Either way it is keyed by the tokens read before the load.
    """
    key = context_key(prefix, policy)
    value = cache.get(key) if found is None else found.get(key)
    if isinstance(value, dict) and TOO_LARGE in value:
        return None
    context = RoleContext.decode(value, policy) if value is not None else None
    if context is not None:
        return context
    context = from_database(policy, user_id, settings.AUTHZ_CONTEXT_MAX_ROWS)
    entry = context.encode() if context is not None else {TOO_LARGE: True}
    if stores is None:
        cache.set(key, entry, timeout=ttl_for(key))
    else:
        stores[key] = entry
    return context
