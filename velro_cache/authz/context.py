"""The per-request authorization context: versions read once, every check keyed by them.

Built by ``AuthorizationMiddleware`` (or by ``authorize`` outside a request).
At its first check it reads the user's and the global version token from
Redis in one round trip; every decision key it uses embeds them. A revoke
that committed before that read has already replaced a token, so this
request cannot reach a decision cached before the revoke, whatever any L1
still holds.

When the tokens cannot be read (Redis unreachable, a cache without
``fetch_authoritative``, the ``authz_cache`` switch off for this user:
``velro_cache.switches``, setting ``VELRO_CACHE["AUTHZ_CACHE"]``) the context is
unvalidated: each check is answered from the database and nothing is read
from or written to the cache. An allow is never served on trust.

With ``VELRO_CACHE["AUTHZ_CONTEXTS"]`` on (the default) a check is decided
from the user's role context (``authz.roles``, loaded once per request) and
the object's facts (``authz.facts``), both cached under tokens read in the
same round trip; a context too large falls back to per-object decisions.

Read-your-writes: a bump made in this thread marks the current request's
contexts stale. While the bump waits for its transaction to commit, checks
go to the database (which sees the transaction's own writes); once it has
committed, the context reads the new tokens.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

from .. import switches
from ..conf import settings
from ..exceptions import L2Unavailable
from ..invalidation.retirement import resolve_cache
from ..ttl import ttl_for
from . import decisions, facts, roles, versions
from .policy import ObjectPolicy, registry

_UNVALIDATED = object()


class AuthorizationContext:
    """One user's checks for the span of one request."""

    def __init__(self, user: Any, cache: Any = None) -> None:
        self.user = user
        self.user_id = user.pk if _is_authenticated(user) else None
        self._cache = cache
        self._prefix: Any = None  # None: not loaded yet; _UNVALIDATED: decide from the database
        self._stale = False
        self._global_token = ""
        self._object_tokens: dict[ObjectPolicy, str] = {}  # policy -> its objects' facts token, read with the prefix
        self._roles: dict[ObjectPolicy, roles.RoleContext | None] = {}  # this request's contexts

    @property
    def cache(self) -> Any:
        """The cache passed (an alias or a cache), else ``VELRO_CACHE["CACHE_ALIAS"]``, resolved on first use."""
        if self._cache is None or isinstance(self._cache, str):
            self._cache = resolve_cache(self._cache)
        return self._cache

    @property
    def validated(self) -> bool:
        """Whether checks are served from the cache (versions known)."""
        return isinstance(self._key_prefix(), str)

    def can(self, action: str, obj: Any) -> bool:
        policy = registry.for_object(obj)
        policy.required_rank(action)  # an unknown action is a bug even for anonymous users
        if not self._may_hold_roles():
            return False
        return self._decide(policy, [obj.pk], action)[obj.pk]

    def can_many(self, action: str, objs: Iterable[Any]) -> dict[Any, bool]:
        """``{pk: allowed}``; uncached objects of one model cost one query together."""
        by_policy: dict[ObjectPolicy, list[Any]] = {}
        for obj in objs:
            by_policy.setdefault(registry.for_object(obj), []).append(obj.pk)
        result: dict[Any, bool] = {}
        for policy, pks in by_policy.items():
            policy.required_rank(action)
            if not self._may_hold_roles():
                result.update(dict.fromkeys(pks, False))
            else:
                result.update(self._decide(policy, list(dict.fromkeys(pks)), action))
        return result

    def preload(self, policy: ObjectPolicy) -> bool:
        """Load (or find cached) the user's role context for ``policy``; whether one is cached now.

        For warming (``authz.warm``): False for anonymous or locally inactive
        users, unvalidated contexts (versions unreadable, caching off), contexts
        off, and contexts too large to cache.
        """
        if not self._may_hold_roles():
            return False
        prefix = self._key_prefix()
        return isinstance(prefix, str) and self._role_context(policy, prefix) is not None

    def mark_stale(self) -> None:
        """A bump was made in this thread: re-read the versions before the next cached check."""
        self._stale = True

    # -- internals ----------------------------------------------------------------------
    def _may_hold_roles(self) -> bool:
        """Anonymous and (as far as this request knows) inactive users hold no role, for free."""
        return self.user_id is not None and getattr(self.user, "is_active", True)

    def _decide(self, policy: ObjectPolicy, pks: list[Any], action: str) -> dict[Any, bool]:
        prefix = self._key_prefix()
        if prefix is _UNVALIDATED:
            return decisions.computed(policy, self.user_id, pks, action)
        if policy in self._object_tokens and policy not in self._roles:
            return self._first_check(policy, prefix, pks, action)
        context = self._role_context(policy, prefix)
        if context is not None:
            return self._from_context(policy, context, pks, action)
        return decisions.from_cache_or_database(self.cache, prefix, policy, self.user_id, pks, action)

    def _first_check(self, policy: ObjectPolicy, prefix: str, pks: list[Any], action: str) -> dict[Any, bool]:
        """The request's first check on ``policy``: its role context and the objects' facts in one read, one store.

        The facts are read along on the bet that the context is small enough
        to decide with them (a context too large leaves them unused and the
        check goes through per-object decisions, as it would have).
        """
        keys = [roles.context_key(prefix, policy)]
        keys += [facts.facts_key(policy, self._global_token, self._object_tokens[policy], pk) for pk in pks]
        found = self.cache.get_many(keys)
        stores: dict[str, Any] = {}
        context = self._roles[policy] = roles.cached_or_loaded(self.cache, prefix, policy, self.user_id, found, stores)
        if context is None:
            result = decisions.from_cache_or_database(self.cache, prefix, policy, self.user_id, pks, action)
        else:
            result = self._from_context(policy, context, pks, action, found, stores)
        if stores:
            self.cache.set_many(stores, timeout=ttl_for(next(iter(stores))))
        return result

    def _role_context(self, policy: ObjectPolicy, prefix: str) -> roles.RoleContext | None:
        """The user's role context for this policy (once per request), None when off or too large."""
        if policy not in self._object_tokens:
            return None  # contexts off, or a policy registered after this request read its versions
        if policy not in self._roles:
            self._roles[policy] = roles.cached_or_loaded(self.cache, prefix, policy, self.user_id)
        return self._roles[policy]

    def _from_context(
        self,
        policy: ObjectPolicy,
        context: roles.RoleContext,
        pks: list[Any],
        action: str,
        found: Any = None,
        stores: dict[str, Any] | None = None,
    ) -> dict[Any, bool]:
        """Decisions from the role context and the objects' facts; a missing object is denied."""
        if not context.active:
            return dict.fromkeys(pks, False)
        required = policy.required_rank(action)
        known = facts.cached_or_loaded(self.cache, policy, self._global_token, self._object_tokens[policy], pks, found, stores)
        return {pk: pk in known and context.rank_on(policy, self.user_id, known[pk]) >= required for pk in pks}

    def _key_prefix(self) -> Any:
        if self._stale:
            if versions.bump_waiting():
                return _UNVALIDATED  # this transaction's own writes: only the database knows them
            self._stale = False
            self._prefix = None
            self._roles = {}
        if self._prefix is None:
            self._prefix = self._load()
        return self._prefix

    def _load(self) -> Any:
        if self.user_id is None or not switches.on(switches.AUTHZ_CACHE, self.user_id):
            return _UNVALIDATED
        policies = registry.policies() if settings.AUTHZ_CONTEXTS else []
        try:
            user_token, global_token, object_tokens = versions.read_versions(self.cache, self.user_id, policies)
        except L2Unavailable:
            return _UNVALIDATED
        self._global_token, self._object_tokens = global_token, object_tokens
        return decisions.key_prefix(self.user_id, user_token, global_token)


def _is_authenticated(user: Any) -> bool:
    return user is not None and getattr(user, "is_authenticated", False) and user.pk is not None


# -- the current request ------------------------------------------------------------------
# The middleware sets a scope here; ``authorize`` uses it, and a bump made in
# this thread marks it stale.

_current: ContextVar[Any] = ContextVar("velro_cache_authz_scope", default=None)


def activate(scope: Any) -> Any:
    """Make ``scope`` (anything with ``context_for(user)`` and ``mark_stale()``) current; returns a reset token."""
    return _current.set(scope)


def deactivate(token: Any) -> None:
    _current.reset(token)


def context_for(user: Any) -> AuthorizationContext:
    """The current request's context for ``user``, else a new one (it reads the versions anew)."""
    scope = _current.get()
    if scope is not None:
        context = scope.context_for(user)
        if context is not None:
            return context
    return AuthorizationContext(user)


def note_bump() -> None:
    scope = _current.get()
    if scope is not None:
        scope.mark_stale()


class Scope:
    """The contexts of one request (normally one user's), for the middleware and for ``authz.scope()``."""

    def __init__(self) -> None:
        self._contexts: dict[Any, AuthorizationContext] = {}

    def context_for(self, user: Any) -> AuthorizationContext | None:
        if not _is_authenticated(user):
            return None
        context = self._contexts.get(user.pk)
        if context is None:
            context = self._contexts[user.pk] = AuthorizationContext(user)
        return context

    def mark_stale(self) -> None:
        for context in self._contexts.values():
            context.mark_stale()
