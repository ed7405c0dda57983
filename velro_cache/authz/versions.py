"""Authorization version tokens: what makes a committed revoke win over every L1.

Every cached decision's key embeds two tokens: the user's and a global one.
They are namespace tokens (``velro_cache.namespaces``: the one token
mechanism), of the namespaces ``authz:user:<id>`` and ``authz`` (the data type itself,
so a retirement coarsened to the data type bumps everyone). A
request reads both once, from Redis (``fetch_authoritative``, never L1), so a
request that starts after a bump cannot even name an old decision.

Role contexts (``authz.roles``) ride on the same two tokens. The facts of
protected objects they are combined with (``authz.facts``: an object's owner
and team, shared by every user) carry the global token and their model's
object token, namespace ``authz:obj:<key name>``, retired when an object's
owner or role-source field changes or an object is deleted. A request reads
all of them in the same one round trip.

A bump retires the namespace after the transaction commits (through
``velro_cache.invalidation``'s on-commit machinery): a new random token is
written. Random, not a counter: a token lost with Redis (flushed, restarted)
and created again can never equal one still embedded in old keys.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .. import namespaces
from ..exceptions import L2Unavailable
from ..invalidation.retirement import Retirement
from ..invalidation.transactions import dirty_namespaces, schedule
from ..keys import build_key
from .policy import ObjectPolicy

NAMESPACE = "authz"
# The global version is the data type's own token: a retirement that coarsens
# many users' namespaces to "authz" (over COARSEN_OVER of them) bumps everyone.
GLOBAL_NAMESPACE = NAMESPACE
GLOBAL_KEY = namespaces.token_key(GLOBAL_NAMESPACE)


def user_namespace(user_id: Any) -> str:
    return build_key(NAMESPACE, "user", user_id)


def user_key(user_id: Any) -> str:
    return namespaces.token_key(user_namespace(user_id))


new_token = namespaces.new_token


def object_namespace(policy: ObjectPolicy) -> str:
    """The namespace whose token the cached facts of one protected model carry."""
    return build_key(NAMESPACE, "obj", policy.key_name)


def read_tokens(cache: Any, user_id: Any) -> tuple[str, str]:
    """The user's and the global token, from the tier all processes share."""
    user_token, global_token, _ = read_versions(cache, user_id, ())
    return user_token, global_token


def read_versions(cache: Any, user_id: Any, policies: Iterable[ObjectPolicy]) -> tuple[str, str, dict[ObjectPolicy, str]]:
    """The user's token, the global token and each policy's object token, in one round trip.

    ``user_id`` None (warming objects' facts, which no user owns): the user
    token returned is ``""``.

    Raises ``L2Unavailable`` when they cannot be known (Redis down, or a
    cache without ``fetch_authoritative``): the caller must then decide from
    the database, never trust a local copy.
    """
    names = list(policies)
    objects = [namespaces.token_key(object_namespace(policy)) for policy in names]
    users = [] if user_id is None else [user_key(user_id)]
    found = _fetch(cache, [*users, GLOBAL_KEY, *objects])
    user_token = found[users[0]] if users else ""
    return user_token, found[GLOBAL_KEY], {name: found[key] for name, key in zip(names, objects)}


def _fetch(cache: Any, keys: list[str]) -> dict[str, Any]:
    fetch = getattr(cache, "fetch_authoritative", None)
    if fetch is None:
        raise L2Unavailable(f"{type(cache).__name__} cannot read authoritatively")
    found = fetch(keys)
    if not _complete(found, keys):
        for key in keys:
            if key not in found:
                cache.add(key, new_token(), timeout=None)
        found = fetch(keys)  # whoever's add won, everyone reads the same token
        if not _complete(found, keys):
            raise L2Unavailable("authorization versions could not be stored")
    return found


def _complete(found: dict[str, Any], keys: list[str]) -> bool:
    return all(isinstance(found.get(key), str) for key in keys)


def bump(names: Iterable[str], using: str) -> None:
    """Retire these namespaces when the current transaction on ``using`` commits (at once outside one)."""
    wanted = set(names)
    if wanted:
        schedule(Retirement(namespaces=wanted), using)


def bump_users(user_ids: Iterable[Any], using: str) -> None:
    bump({user_namespace(user_id) for user_id in user_ids if user_id is not None}, using)


def bump_objects(policies: Iterable[ObjectPolicy], using: str) -> None:
    """Retire the cached facts of these protected models (an owner or team changed, an object deleted)."""
    bump({object_namespace(policy) for policy in policies}, using)


def bump_global(using: str) -> None:
    bump({GLOBAL_NAMESPACE}, using)


def bump_waiting() -> bool:
    """Whether this thread has a bump that waits for its transaction to commit."""
    return any(name == NAMESPACE or name.startswith(NAMESPACE + ":") for name in dirty_namespaces())
