"""Warming authorization: users' role contexts and objects' facts, loaded before the first check.

For warming plans (``velro_cache.warming``: "the 100 most active users and
their authorization contexts into L1") and session preloads on login. Both go
through the same code as a check: the tokens are read from Redis first, then
the rows from the database, and the result is stored under the tokens read.
A revoke that commits while a warm-up runs has retired those tokens, so
warming never stores a context or a fact a request could serve after it.
Nothing is warmed when the versions cannot be read (Redis down) or contexts
are off.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.db import models

from ..conf import settings
from ..exceptions import L2Unavailable
from ..invalidation.retirement import resolve_cache
from . import facts, versions
from .context import AuthorizationContext
from .policy import registry

FACTS_BATCH = 1000  # objects per facts query


def warm_contexts(users: Iterable[Any], cache: Any = None) -> int:
    """Cache each user's role context for every registered policy; returns how many were cached or present."""
    warmed = 0
    for user in users:
        context = AuthorizationContext(user, cache)
        warmed += sum(context.preload(policy) for policy in registry.policies())
    return warmed


def warm_objects(model: type[models.Model], pks: Sequence[Any], cache: Any = None) -> int:
    """Cache the facts (owner, team) of these objects; returns how many exist and are cached."""
    if not settings.AUTHZ_CACHE or not settings.AUTHZ_CONTEXTS or not pks:
        return 0
    policy = registry.for_model(model)
    cache = resolve_cache(cache)
    try:
        _, global_token, tokens = versions.read_versions(cache, None, [policy])
    except L2Unavailable:
        return 0
    warmed = 0
    for start in range(0, len(pks), FACTS_BATCH):
        warmed += len(facts.cached_or_loaded(cache, policy, global_token, tokens[policy], pks[start:start + FACTS_BATCH]))
    return warmed
