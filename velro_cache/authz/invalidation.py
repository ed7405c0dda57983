"""Model signals -> version bumps on commit, for every path that grants or revokes.

Connected when a policy is registered, for exactly the models that decide
roles:

- the protected model: its owner changed (bump old and new owner), a field a
  role source joins on changed (a generation moved to another team: bump the
  members of both teams: decisions are per (user, object) and every one of
  them changed; a team move is rare, so this keeps the per-request read at
  two tokens instead of adding per-team or per-object tokens to every check);
- each role source (memberships, shares): a row saved or deleted (bump its
  user, and the previous user when the row was moved);
- the user model: ``is_active`` or ``is_superuser`` changed (bump the user).

Deleting a team cascades to its memberships, whose deletes bump their users.
Values at load time are remembered in ``post_init`` (only those already
loaded: a deferred field is never fetched for this); when unknown, a save
bumps anyway. Writes that send no signal call ``authz.invalidate_user``.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import signals

from . import versions
from .context import note_bump
from .policy import ObjectPolicy, RoleSource, registry

LOADED = "_velro_authz_loaded"
_UNKNOWN = object()
USER_FLAGS = ("is_active", "is_superuser")


def _remember(instance: Any, attnames: tuple[str, ...]) -> None:
    instance.__dict__[LOADED] = {name: instance.__dict__.get(name, _UNKNOWN) for name in attnames}


def _before(instance: Any, attname: str) -> Any:
    return instance.__dict__.get(LOADED, {}).get(attname, _UNKNOWN)


def _changed(instance: Any, attname: str) -> bool:
    return _before(instance, attname) != instance.__dict__.get(attname, _UNKNOWN) or _before(instance, attname) is _UNKNOWN


def _bump(user_ids: set[Any], using: str) -> None:
    """Bump these users; when one of them cannot be known (a deferred field), everyone."""
    if _UNKNOWN in user_ids:
        versions.bump_global(using)
        note_bump()
        return
    user_ids.discard(None)
    if user_ids:
        versions.bump_users(user_ids, using)
        note_bump()


def _touches(update_fields: Any, attnames: set[str], instance: Any) -> bool:
    if update_fields is None:
        return True
    names = set()
    for name in update_fields:
        field = instance._meta.get_field(name)
        names |= {field.name, field.attname}
    return bool(names & attnames)


# -- the protected model ------------------------------------------------------------------


class ProtectedModelWatcher:
    def __init__(self, policy: ObjectPolicy) -> None:
        self.policy = policy
        self.owner = policy.owner_attname()
        self.vias = {policy.model._meta.get_field(s.via).attname: s for s in policy.sources if s.via != "pk"}
        self.attnames = tuple(filter(None, [self.owner, *self.vias]))

    def loaded(self, sender: Any, instance: Any, **kwargs: Any) -> None:
        _remember(instance, self.attnames)

    def saved(self, sender: Any, instance: Any, created: bool, update_fields: Any, using: str, **kwargs: Any) -> None:
        if not created and _touches(update_fields, set(self.attnames), instance):
            users: set[Any] = set()
            if self.owner and _changed(instance, self.owner):
                users |= {_before(instance, self.owner), getattr(instance, self.owner)}
            for attname, source in self.vias.items():
                if _changed(instance, attname):
                    users |= _source_users(source, {_before(instance, attname), getattr(instance, attname)}, using)
            _bump(users, using)
        _remember(instance, self.attnames)


def _source_users(source: RoleSource, values: set[Any], using: str) -> set[Any]:
    if _UNKNOWN in values:
        return {_UNKNOWN}  # cannot tell which team it left: _bump falls back to a global bump
    values.discard(None)
    if not values:
        return set()
    rows = source.model._base_manager.using(using).filter(**{f"{source.match_attname()}__in": values})
    return set(rows.values_list(source.user_attname(), flat=True))


# -- role sources and users ---------------------------------------------------------------


class SourceWatcher:
    def __init__(self, source: RoleSource) -> None:
        self.user = source.user_attname()

    def loaded(self, sender: Any, instance: Any, **kwargs: Any) -> None:
        _remember(instance, (self.user,))

    def saved(self, sender: Any, instance: Any, using: str, **kwargs: Any) -> None:
        _bump({_before(instance, self.user), getattr(instance, self.user)}, using)
        _remember(instance, (self.user,))

    def deleted(self, sender: Any, instance: Any, using: str, **kwargs: Any) -> None:
        _bump({getattr(instance, self.user), _before(instance, self.user)}, using)


class UserWatcher:
    def __init__(self) -> None:
        self.flags = tuple(name for name in USER_FLAGS if any(f.attname == name for f in get_user_model()._meta.concrete_fields))

    def loaded(self, sender: Any, instance: Any, **kwargs: Any) -> None:
        _remember(instance, self.flags)

    def saved(self, sender: Any, instance: Any, created: bool, update_fields: Any, using: str, **kwargs: Any) -> None:
        touched = not created and _touches(update_fields, set(self.flags), instance)
        if touched and any(_changed(instance, name) for name in self.flags):
            _bump({instance.pk}, using)
        _remember(instance, self.flags)


# -- wiring -------------------------------------------------------------------------------

def _connect(model: Any, watcher: Any, uid: str) -> None:
    signals.post_init.connect(watcher.loaded, sender=model, weak=False, dispatch_uid=f"velro_authz:init:{uid}")
    signals.post_save.connect(watcher.saved, sender=model, weak=False, dispatch_uid=f"velro_authz:save:{uid}")
    if hasattr(watcher, "deleted"):
        signals.post_delete.connect(watcher.deleted, sender=model, weak=False, dispatch_uid=f"velro_authz:delete:{uid}")


def watch(policy: ObjectPolicy) -> None:
    """Connect the bumps a newly registered policy needs (idempotent per model)."""
    label = policy.model._meta.label
    _connect(policy.model, ProtectedModelWatcher(policy), f"object:{label}")
    for source in policy.sources:
        _connect(source.model, SourceWatcher(source), f"source:{source.model._meta.label}:{source.user}")
    user_model = get_user_model()
    _connect(user_model, UserWatcher(), f"user:{user_model._meta.label}")


registry.on_register.append(watch)
