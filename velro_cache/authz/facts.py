"""Object facts: the columns of a protected object that decide roles, cached once for every user.

A role context (``authz.roles``) says what a user holds through role
sources; to decide a check on an object it needs the object's owner and the
values its sources match on (its team). Those are the object's *facts*:
``[pk, owner_id, <via value>...]``, read from the database in one query for
any number of objects and cached under
``auth:obj:<model>:<policy fingerprint>:v:<global token>:<object token>:<pk>``.

Facts are per object, not per (user, object): one user's first check on a
generation fills what every other user's first check on it reads, which is
what lifts the hit rate on traffic where most (user, object) pairs are seen
once.

Why the key carries these tokens: the object token (``versions.object_namespace``)
is retired on commit whenever a save changes an object's owner or team, or an
object is deleted; the global token whenever rows are unknown (``QuerySet.update``
of an owner column, raw SQL). The tokens are read from Redis at the request's
start, before the facts are read from the database, so facts read before a
move are stored under the token the move retired and no request that starts
after the move can name them. A missing object has no facts and nothing is
cached for it (a primary key created later is never denied from the cache).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.db.models import F

from ..keys import build_key
from ..ttl import ttl_for
from .policy import ObjectPolicy, pk_as_found

Facts = list[Any]  # [pk as the database has it, owner id (None without an owner field), via values...]


def facts_key(policy: ObjectPolicy, global_token: str, object_token: str, pk: Any) -> str:
    return build_key("auth", "obj", policy.key_name, policy.fingerprint, "v", global_token, object_token, pk)


def via_attnames(policy: ObjectPolicy) -> list[str]:
    """The attnames role sources match on, in source order (sources matching the pk itself need none)."""
    return [policy.model._meta.get_field(source.via).attname for source in policy.sources if source.via != "pk"]


def columns(policy: ObjectPolicy) -> list[str]:
    """The attnames that decide roles on ``policy.model``: its owner, then each source's ``via``."""
    owner = policy.owner_attname()
    return [*([owner] if owner else []), *via_attnames(policy)]


def from_database(policy: ObjectPolicy, pks: Sequence[Any]) -> dict[Any, Facts]:
    """Facts of the objects that exist, by the pk asked for (one query; names ``_authz_`` like the role query)."""
    names = columns(policy)
    aliases = {f"_authz_fact{index}": F(name) for index, name in enumerate(names)}
    rows = policy.model._base_manager.filter(pk__in=list(pks)).annotate(**aliases).order_by().values_list("pk", *aliases)
    found = {row[0]: _facts(policy, row) for row in rows}
    asked: dict[Any, Facts] = {}
    for pk in pks:
        facts = found.get(pk_as_found(pk, found))
        if facts is not None:
            asked[pk] = facts
    return asked


def _facts(policy: ObjectPolicy, row: tuple[Any, ...]) -> Facts:
    pk, *values = row
    if not policy.owner:
        values = [None, *values]
    return [pk, *values]


def valid(policy: ObjectPolicy, value: Any) -> bool:
    """Whether a cached value has the shape this policy's facts have (else it is a miss)."""
    return isinstance(value, list) and len(value) == 2 + len(via_attnames(policy))


def cached_or_loaded(
    cache: Any,
    policy: ObjectPolicy,
    global_token: str,
    object_token: str,
    pks: Sequence[Any],
    found: Mapping[str, Any] | None = None,
    stores: dict[str, Any] | None = None,
) -> dict[Any, Facts]:
    """Facts from the cache, the rest from one query and then cached; objects that do not exist are left out.

    ``found`` / ``stores``: as in ``roles.cached_or_loaded`` (read with the
    role context, stored with it).
    """
    keys = {pk: facts_key(policy, global_token, object_token, pk) for pk in pks}
    if found is None:
        found = _read(cache, list(keys.values()))
    result = {pk: found[key] for pk, key in keys.items() if valid(policy, found.get(key))}
    missing = [pk for pk in keys if pk not in result]
    if missing:
        loaded = from_database(policy, missing)
        entries = {keys[pk]: facts for pk, facts in loaded.items()}
        if stores is not None:
            stores.update(entries)
        elif entries:
            cache.set_many(entries, timeout=ttl_for(next(iter(entries))))
        result.update(loaded)
    return result


def _read(cache: Any, keys: list[str]) -> Mapping[str, Any]:
    if len(keys) == 1:
        value = cache.get(keys[0])
        return {keys[0]: value} if value is not None else {}
    return cache.get_many(keys)
