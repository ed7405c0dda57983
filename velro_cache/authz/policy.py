"""Who may do what to an object, declared as data: roles, actions, and where roles come from.

A project declares one ``ObjectPolicy`` per protected model and registers it
like an admin class::

    @authz.register(Generation)
    class GenerationPolicy(authz.ObjectPolicy):
        key_name = "gen"
        owner = "owner"
        sources = [authz.RoleSource(TeamMembership, match="team", via="team")]

The declaration is data rather than a method on purpose: the library turns it
into ONE query that answers a user's role on any number of objects (the
object's owner column, a correlated subquery per role source, and the user's
own flags), so a batch of N uncached checks costs one query, and every answer
is read from the database itself. Nothing a cache may hold stale (an
instance's ``owner_id`` read from a cached copy, a user's ``is_active`` from a
cached token identity) decides a role that is then cached.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django.apps import apps
from django.contrib.auth import get_user_model
from django.db import models
from django.db.models import Case, OuterRef, Subquery, Value, When

from ..exceptions import AlreadyRegistered, NotRegistered
from ..keys import digest

DEFAULT_ROLES = ("viewer", "editor", "owner")
DEFAULT_ACTIONS = {"read": "viewer", "media": "viewer", "write": "editor", "delete": "owner", "share": "owner"}
# Django permission codename prefixes -> actions, for CachedPermissionBackend.
DEFAULT_PERMISSIONS = {"view": "read", "change": "write", "delete": "delete"}


class ObjectRef:
    """A protected object known only by model and primary key (e.g. from a cached dict).

    Enough for a check: roles are read from the database by primary key, never
    from the caller's copy of the object.
    """

    __slots__ = ("model", "pk")

    def __init__(self, model: type[models.Model], pk: Any) -> None:
        self.model = model
        self.pk = pk

    def __repr__(self) -> str:
        return f"ObjectRef({self.model._meta.label}, {self.pk!r})"


def _model(value: Any) -> type[models.Model]:
    return apps.get_model(value) if isinstance(value, str) else value


class RoleSource:
    """Rows of a model that give a user a role on objects: team memberships, shares.

    A row applies to an object when ``row.<match>`` equals ``object.<via>`` and
    to the user ``row.<user>``; its ``<role>`` column is translated by ``roles``
    (source role -> object role; by default a role keeps its name). Team
    memberships: ``RoleSource(TeamMembership, match="team", via="team")``;
    direct shares: ``RoleSource(GenerationShare, match="generation")``.
    """

    def __init__(
        self,
        model: type[models.Model] | str,
        *,
        match: str,
        via: str = "pk",
        user: str = "user",
        role: str = "role",
        roles: Mapping[str, str] | None = None,
    ) -> None:
        self._model = model
        self.match, self.via, self.user, self.role = match, via, user, role
        self.roles = dict(roles) if roles is not None else None

    @property
    def model(self) -> type[models.Model]:
        return _model(self._model)

    def user_attname(self) -> str:
        return self.model._meta.get_field(self.user).attname

    def match_attname(self) -> str:
        return self.model._meta.get_field(self.match).attname

    def translation(self, policy: ObjectPolicy) -> dict[str, str]:
        return self.roles if self.roles is not None else {role: role for role in policy.roles}

    def subquery(self, policy: ObjectPolicy, user_id: Any) -> Subquery:
        """The strongest object role a row of this source gives ``user_id`` on the outer object."""
        translation = self.translation(policy)
        rank = Case(
            *[When(**{self.role: source}, then=Value(policy.rank(target))) for source, target in translation.items()],
            default=Value(0),
            output_field=models.IntegerField(),
        )
        rows = self.model._base_manager.filter(**{self.match: OuterRef(self.via), self.user: user_id})
        return Subquery(rows.annotate(_authz_rank=rank).order_by("-_authz_rank").values(self.role)[:1])


class ObjectPolicy:
    """The roles, actions and role sources of one protected model (override the class attributes)."""

    #: Roles, weakest first; a project may declare more ("commenter", "admin").
    roles: Sequence[str] = DEFAULT_ROLES
    #: Action -> the weakest role allowed to perform it.
    actions: Mapping[str, str] = DEFAULT_ACTIONS
    #: The foreign key to the user who owns an object; ownership confers ``owner_role``.
    owner: str | None = None
    #: The role ownership confers (default: the strongest role).
    owner_role: str | None = None
    #: Where else roles come from: team memberships, shares.
    sources: Sequence[RoleSource] = ()
    #: The key part naming this model in decision keys (default: the model label).
    key_name: str | None = None
    #: Permission codename prefix -> action, for ``user.has_perm("app.change_model", obj)``.
    permissions: Mapping[str, str] = DEFAULT_PERMISSIONS

    def __init__(self, model: type[models.Model]) -> None:
        self.model = model
        self.roles = tuple(self.roles)
        self._rank = {role: index + 1 for index, role in enumerate(self.roles)}
        self.top_role = self.roles[-1]
        self.owner_role = self.owner_role or self.top_role
        self._required = {action: self.rank(role) for action, role in self.actions.items()}
        self.key_name = self.key_name or model._meta.label_lower
        self.sources = tuple(self.sources)
        self.fingerprint = self._fingerprint()

    def _fingerprint(self) -> str:
        """A digest of what decides: roles, action map, owner, sources. In every decision key, so a
        policy changed in settings (a deploy) never reads decisions cached under the old one."""
        sources = [
            (str(s._model if isinstance(s._model, str) else s._model._meta.label), s.match, s.via, s.user, s.role,
             sorted((s.roles or {}).items()) if s.roles is not None else None)
            for s in self.sources
        ]
        described = repr((self.roles, sorted(self._required.items()), self.owner, self.owner_role, sources))
        return digest(described.encode())[:8]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} for {self.model._meta.label}>"

    def rank(self, role: str | None) -> int:
        """0 for no role; higher is stronger. An undeclared role is a declaration bug."""
        if role is None:
            return 0
        try:
            return self._rank[role]
        except KeyError:
            raise ValueError(f"{type(self).__name__}: {role!r} is not one of the declared roles {self.roles}") from None

    def required_rank(self, action: str) -> int:
        try:
            return self._required[action]
        except KeyError:
            raise ValueError(f"unknown action {action!r} for {self.model._meta.label}; declared: {sorted(self._required)}") from None

    def allows(self, role: str | None, action: str) -> bool:
        return role is not None and self.rank(role) >= self.required_rank(action)

    def problems(self) -> list[str]:
        """Fields the declaration names that do not exist (reported by check E041)."""
        found = []
        names = [(self.model, self.owner, "owner")] if self.owner else []
        names += [(self.model, s.via, "a source's via") for s in self.sources if s.via != "pk"]
        for source in self.sources:
            names += [(source.model, source.match, "match"), (source.model, source.user, "user"), (source.model, source.role, "role")]
        for model, name, what in names:
            try:
                model._meta.get_field(name)
            except Exception:  # noqa: BLE001 - FieldDoesNotExist and friends: all mean "not a field"
                found.append(f"{type(self).__name__}: {what} {name!r} is not a field of {model._meta.label}.")
        return found

    def owner_attname(self) -> str | None:
        return self.model._meta.get_field(self.owner).attname if self.owner else None

    # -- the one query ------------------------------------------------------------------
    def roles_of(self, user_id: Any, pks: Iterable[Any], using: str | None = None) -> dict[Any, str | None]:
        """The user's role on each object, read from the database in one query."""
        pks = list(pks)
        if not pks:
            return {}
        rows = self._query(user_id, pks, using)
        found = {row[0]: self._role_from_row(user_id, row[1:]) for row in rows}
        return {pk: found.get(pk_as_found(pk, found)) for pk in pks}

    def _query(self, user_id: Any, pks: list[Any], using: str | None) -> Any:
        user_model = get_user_model()
        user_rows = user_model._base_manager.filter(pk=user_id)
        flags = {}
        for name, fallback in (("is_active", True), ("is_superuser", False)):
            has_field = any(field.name == name for field in user_model._meta.concrete_fields)
            flags[f"_authz_{name}"] = Subquery(user_rows.values(name)[:1]) if has_field else Value(fallback)
        sources = {f"_authz_source{index}": source.subquery(self, user_id) for index, source in enumerate(self.sources)}
        queryset = self.model._base_manager.db_manager(using).filter(pk__in=pks).annotate(**flags, **sources)
        owner = [self.owner_attname()] if self.owner else []
        return queryset.values_list("pk", *flags, *owner, *sources)

    def _role_from_row(self, user_id: Any, row: tuple[Any, ...]) -> str | None:
        is_active, is_superuser, *rest = row
        if not is_active:
            return None
        if is_superuser:
            return self.top_role
        best = 0
        if self.owner:
            owner_id, *rest = rest
            if owner_id is not None and owner_id == user_id:
                best = self.rank(self.owner_role)
        for source, value in zip(self.sources, rest):
            if value is not None:
                best = max(best, self.rank(source.translation(self).get(value)))
        return self.roles[best - 1] if best else None


def pk_as_found(pk: Any, found: dict[Any, Any]) -> Any:
    """A pk as the database returns it (``"5"`` from a URL finds the row ``5``); the policy's lookups and ``facts`` share it."""
    if pk in found or not found:
        return pk
    sample = next(iter(found))
    try:
        return type(sample)(pk)
    except (TypeError, ValueError):
        return pk


class Registry:
    """Protected model -> its policy (admin-style)."""

    def __init__(self) -> None:
        self._policies: dict[type[models.Model], ObjectPolicy] = {}
        self.on_register: list[Any] = []

    def register(self, model: type[models.Model], policy_class: type[ObjectPolicy]) -> ObjectPolicy:
        if model in self._policies:
            raise AlreadyRegistered(f"{model._meta.label} already has an authorization policy")
        policy = policy_class(model)
        self._policies[model] = policy
        for callback in self.on_register:
            callback(policy)
        return policy

    def unregister(self, model: type[models.Model]) -> None:
        self._policies.pop(model, None)

    def for_model(self, model: type[models.Model]) -> ObjectPolicy:
        policy = self._policies.get(model)
        if policy is None:
            concrete = getattr(model._meta, "concrete_model", model)
            policy = self._policies.get(concrete)
        if policy is None:
            raise NotRegistered(f"{model._meta.label} has no authorization policy: register one with velro_cache.authz.register")
        return policy

    def for_object(self, obj: Any) -> ObjectPolicy:
        model = obj.model if type(obj) is ObjectRef else type(obj)
        return self.for_model(model)

    def policies(self) -> list[ObjectPolicy]:
        return list(self._policies.values())


registry = Registry()


def register(model: type[models.Model]) -> Any:
    """Class decorator: ``@authz.register(Generation) class GenerationPolicy(authz.ObjectPolicy): ...``."""

    def wrap(policy_class: type[ObjectPolicy]) -> type[ObjectPolicy]:
        registry.register(model, policy_class)
        return policy_class

    return wrap
