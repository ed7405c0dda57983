"""Authorization version tokens: what makes a committed revoke win over every L1.

Every cached decision's key embeds two tokens: the user's and a global one.
A request reads both once, from Redis (``fetch_authoritative``, never L1), so
a request that starts after a bump cannot even name an old decision.

A bump deletes the token after the transaction commits (through
``velro_cache.invalidation``'s on-commit machinery); the next reader creates
a fresh random one with ``cache.add``. Random, not a counter: a token lost
with Redis (flushed, restarted, or a delete replayed after an outage) and
created again can never equal one still embedded in old keys.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import Any

from ..exceptions import L2Unavailable
from ..invalidation.retirement import Retirement
from ..invalidation.transactions import dirty_namespaces, schedule
from ..keys import build_key

PREFIX = build_key("authz", "ver")
GLOBAL_KEY = build_key("authz", "ver", "global")
TOKEN_BYTES = 6


def user_key(user_id: Any) -> str:
    return build_key("authz", "ver", "user", user_id)


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def read_tokens(cache: Any, user_id: Any) -> tuple[str, str]:
    """The user's and the global token, from the tier all processes share.

    Raises ``L2Unavailable`` when they cannot be known (Redis down, or a
    cache without ``fetch_authoritative``): the caller must then decide from
    the database, never trust a local copy.
    """
    fetch = getattr(cache, "fetch_authoritative", None)
    if fetch is None:
        raise L2Unavailable(f"{type(cache).__name__} cannot read authoritatively")
    keys = [user_key(user_id), GLOBAL_KEY]
    found = fetch(keys)
    if not _complete(found, keys):
        for key in keys:
            if key not in found:
                cache.add(key, new_token(), timeout=None)
        found = fetch(keys)  # whoever's add won, everyone reads the same token
        if not _complete(found, keys):
            raise L2Unavailable("authorization versions could not be stored")
    return found[keys[0]], found[keys[1]]


def _complete(found: dict[str, Any], keys: list[str]) -> bool:
    return all(isinstance(found.get(key), str) for key in keys)


def bump(keys: Iterable[str], using: str) -> None:
    """Retire tokens when the current transaction on ``using`` commits (at once outside one).

    The keys are retired as namespaces too, only so that ``dirty_namespaces``
    tells a context in this thread that a bump is still waiting for commit.
    """
    names = set(keys)
    if names:
        schedule(Retirement(namespaces=set(names), keys=set(names)), using)


def bump_users(user_ids: Iterable[Any], using: str) -> None:
    bump({user_key(user_id) for user_id in user_ids if user_id is not None}, using)


def bump_global(using: str) -> None:
    bump({GLOBAL_KEY}, using)


def bump_waiting() -> bool:
    """Whether this thread has a bump that waits for its transaction to commit."""
    return any(name.startswith(PREFIX) for name in dirty_namespaces())
