"""Decisions: their keys, the lookup through the cache, and the database answer on a miss.

A decision key is ``auth:user:<id>:v:<user token>:<global token>:<model>:<policy fingerprint>:<pk>:<action>``
holding ``True`` or ``False`` (denies are cached too). The fingerprint is a
digest of the policy (roles, actions, owner, sources): a tightened policy
names other keys. The tokens make every
key a user's decisions were cached under unreachable once that user's (or
the global) version is bumped. On a miss the user's role on the object comes
from the database (``ObjectPolicy.roles_of``: one query for any number of
objects), and the decisions for every declared action are stored at once,
because the role answers them all.

Why this is not a ``velro_cache.reads`` read-through: a miss stores more than
it read (every action's decision), and the keys already carry the version
tokens read authoritatively once per request, which do for decisions what
namespace tokens do for ``cached_read`` (stamping namespace tokens read from
L1 on top would cost lookups on every check and add nothing). It uses the
cache's own ``get``/``get_many``/``set_many``, with ``ttl_for``'s TTL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..keys import SEPARATOR, build_key
from ..ttl import ttl_for
from .policy import ObjectPolicy


def key_prefix(user_id: Any, user_token: str, global_token: str) -> str:
    return build_key("auth", "user", user_id, "v", user_token, global_token)


def decision_key(prefix: str, policy: ObjectPolicy, pk: Any, action: str) -> str:
    # build_key joins normalized parts, so prefix + ":" + suffix == build_key(all parts).
    return prefix + SEPARATOR + build_key(policy.key_name, policy.fingerprint, pk, action)


def computed(policy: ObjectPolicy, user_id: Any, pks: Sequence[Any], action: str) -> dict[Any, bool]:
    """Decisions straight from the database, cached nowhere (one query)."""
    roles = policy.roles_of(user_id, pks)
    return {pk: policy.allows(roles[pk], action) for pk in pks}


def from_cache_or_database(cache: Any, prefix: str, policy: ObjectPolicy, user_id: Any, pks: Sequence[Any], action: str) -> dict[Any, bool]:
    """Decisions from the cache; the misses from one query, then cached for every action."""
    if len(pks) == 1:
        pk = pks[0]
        value = cache.get(decision_key(prefix, policy, pk, action))
        if value is not None:
            return {pk: value}
        return _fill(cache, prefix, policy, user_id, pks, action)
    keys = {pk: decision_key(prefix, policy, pk, action) for pk in pks}
    found = cache.get_many(keys.values())
    result = {pk: found[key] for pk, key in keys.items() if key in found}
    missing = [pk for pk in pks if pk not in result]
    if missing:
        result.update(_fill(cache, prefix, policy, user_id, missing, action))
    return result


def _fill(cache: Any, prefix: str, policy: ObjectPolicy, user_id: Any, pks: Sequence[Any], action: str) -> dict[Any, bool]:
    roles = policy.roles_of(user_id, pks)
    entries = {
        decision_key(prefix, policy, pk, each): policy.allows(role, each)
        for pk, role in roles.items()
        for each in policy.actions
    }
    cache.set_many(entries, timeout=ttl_for(next(iter(entries))))
    return {pk: policy.allows(roles[pk], action) for pk in pks}
