"""Every write that can grant or revoke -> version bumps on commit, through write capture.

``velro_cache.invalidation.capture`` sees every statement on the tables that
decide roles (the protected models, the role sources, the user model; proxies
and multi-table children by their concrete model) and tells this subscriber:

- ``row_changed(model, before, after)``: a ``save()`` (``before`` read from
  the database in the same transaction, locked, never what the instance
  remembered) or a deleted row (``after`` is None). Bumped: a protected
  object's old and new owner, and the role-source users of its old and new
  ``via`` values (a generation moved to another team: the members of both);
  when it is deleted, its owner and those users too (a pk reused later must
  not inherit their decisions). Either also retires the model's cached
  object facts (``authz.facts``: owner and team, shared by every user's
  role context); a role source row's old and new user; a user
  whose ``is_active``/``is_superuser`` changed or who is deleted.
- ``table_written(model, verb, sql)``: rows unknown (``QuerySet.update``,
  ``bulk_update``, ``bulk_create``, raw SQL): the global version is bumped,
  unless the statement is an ``UPDATE`` that names none of the columns that
  decide roles (``UPDATE auth_user SET last_login = ...``), or an ``INSERT``
  of protected objects or users (new rows carry no cached decision).

Bumps are scheduled with ``velro_cache.invalidation.transactions`` (the one
"remember, then act on commit" module), so a rollback bumps nothing.
"""

from __future__ import annotations

import re
from typing import Any

from django.contrib.auth import get_user_model
from django.db import models

from ..invalidation import capture
from . import facts, versions
from .context import note_bump
from .policy import ObjectPolicy, RoleSource, registry

USER_FLAGS = ("is_active", "is_superuser")


def _bump(user_ids: set[Any], using: str, objects: set[ObjectPolicy] | None = None) -> None:
    """Retire these users' versions and these protected models' object facts on commit."""
    user_ids.discard(None)
    if user_ids:
        versions.bump_users(user_ids, using)
    if objects:
        versions.bump_objects(objects, using)
    if user_ids or objects:
        note_bump()


def _bump_everyone(using: str) -> None:
    versions.bump_global(using)
    note_bump()


def _source_users(source: RoleSource, values: set[Any], using: str) -> set[Any]:
    """The users a role source gives a role through these ``via`` values (one query)."""
    values.discard(None)
    if not values:
        return set()
    rows = source.model._base_manager.using(using).filter(**{f"{source.match_attname()}__in": values})
    return set(rows.values_list(source.user_attname(), flat=True))


def _value(row: models.Model | None, attname: str) -> Any:
    return None if row is None else row.__dict__.get(attname, getattr(row, attname, None))


def _concrete(model: type[models.Model]) -> type[models.Model]:
    return model._meta.concrete_model or model


def _names_any(sql: str, columns: set[str]) -> bool:
    """Whether an ``UPDATE`` may set one of these columns (a word match: false positives only cost a bump)."""
    if not sql:
        return True
    return any(re.search(rf"\b{re.escape(column)}\b", sql, re.IGNORECASE) for column in columns)


class AuthorizationSubscriber:
    """Bumps for every path that grants or revokes (see the module docstring)."""

    def watched_models(self) -> list[type[models.Model]]:
        found: list[type[models.Model]] = []
        for policy in registry.policies():
            found += [policy.model, *(source.model for source in policy.sources)]
        if found:
            found.append(get_user_model())
        return found

    # -- rows known ---------------------------------------------------------------------
    def row_changed(self, model: type[models.Model], before: models.Model | None, after: models.Model | None, using: str) -> None:
        users: set[Any] = set()
        objects: set[ObjectPolicy] = set()
        for policy in registry.policies():
            if _concrete(policy.model) is model:
                users |= self._protected(policy, before, after, using)
                if self._facts_changed(policy, before, after):
                    objects.add(policy)
            for source in policy.sources:
                if _concrete(source.model) is model and (before is None or after is None or self._source_moved(source, before, after)):
                    users |= {_value(before, source.user_attname()), _value(after, source.user_attname())}
        if _concrete(get_user_model()) is model and before is not None:
            if after is None or any(_value(before, flag) != _value(after, flag) for flag in self._flags()):
                users.add(before.pk)
        _bump(users, using, objects)

    @staticmethod
    def _facts_changed(policy: ObjectPolicy, before: Any, after: Any) -> bool:
        """Whether a save or delete changed what ``authz.facts`` caches of the object (owner, ``via`` values)."""
        if before is None:
            return False  # a new object: no facts are cached for a pk that did not exist
        return after is None or any(_value(before, name) != _value(after, name) for name in facts.columns(policy))

    def _protected(self, policy: ObjectPolicy, before: Any, after: Any, using: str) -> set[Any]:
        if before is None:
            return set()  # a new object: nobody has a decision cached for it (its pk was retired when deleted)
        users: set[Any] = set()
        owner = policy.owner_attname()
        if owner and (after is None or _value(before, owner) != _value(after, owner)):
            users |= {_value(before, owner), _value(after, owner)}
        for source in policy.sources:
            if source.via == "pk":
                if after is None:
                    users |= _source_users(source, {before.pk}, using)
                continue
            via = policy.model._meta.get_field(source.via).attname
            if after is None or _value(before, via) != _value(after, via):
                users |= _source_users(source, {_value(before, via), _value(after, via)}, using)
        return users

    @staticmethod
    def _source_moved(source: RoleSource, before: Any, after: Any) -> bool:
        names = [source.user_attname(), source.match_attname(), source.model._meta.get_field(source.role).attname]
        return any(_value(before, name) != _value(after, name) for name in names)

    @staticmethod
    def _flags() -> tuple[str, ...]:
        attnames = {f.attname for f in get_user_model()._meta.concrete_fields}
        return tuple(name for name in USER_FLAGS if name in attnames)

    # -- rows unknown -------------------------------------------------------------------
    def table_written(self, model: type[models.Model], verb: str, sql: str, using: str) -> None:
        concrete = _concrete(model)
        deciding: set[str] = set()
        sources = False
        for policy in registry.policies():
            if _concrete(policy.model) is concrete:
                vias = (policy.model._meta.get_field(s.via).column for s in policy.sources if s.via != "pk")
                deciding |= {policy.owner_attname() or "", *vias}
            if any(_concrete(source.model) is concrete for source in policy.sources):
                sources = True
        if _concrete(get_user_model()) is concrete:
            deciding |= set(self._flags())
        deciding.discard("")
        if sources:
            _bump_everyone(using)  # a grant, a revoke, a move: rows unknown
        elif verb == "INSERT":
            return  # new protected objects or users carry no cached decision
        elif verb != "UPDATE" or _names_any(sql, deciding):
            _bump_everyone(using)


subscriber = AuthorizationSubscriber()


def watch(policy: ObjectPolicy) -> None:
    """A policy registered: its models are watched from now on."""
    capture.changed()


registry.on_register.append(watch)
capture.subscribe(subscriber)
