"""Declared invalidation's side of write capture, and the signals that see relations.

``DeclarationSubscriber`` hears every write from ``capture``: a saved or
deleted row with its old values read from the database (precise: the
declarations' namespaces for the old row and the new one, nothing when no
declared field changed), or a table written with rows unknown (coarse: the
data types the model's declarations use).

Receivers are connected per registered model (and its subclasses and
proxies), not for every model: a ``post_delete`` receiver stops Django from
fast-deleting a model's rows, which must cost only the models that asked for
invalidation. ``m2m_changed`` is connected once for all (it costs nothing
elsewhere) and filtered here.

Deletes compute what they retire in ``pre_delete``, while relations still
resolve (a team's members, before the cascade removes the memberships), and
schedule it in ``post_delete``, after the row is gone.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.db import models
from django.db.models import signals

from . import capture
from .declarations import ModelCache, registry
from .retirement import Retirement, combined
from .transactions import schedule

DELETING = "_velro_cache_deleting"
CLEARING = "_velro_cache_clearing"


def _retirement(declarations: tuple[ModelCache, ...], instance: models.Model, remembered: dict | None = None) -> Retirement:
    return combined(declaration.retirement(instance, remembered) for declaration in declarations)


def _changed_fields(model: type[models.Model], before: models.Model, after: models.Model) -> list[str]:
    """Fields whose database value differs from the saved one (deferred fields were not saved)."""
    values = after.__dict__
    return [
        f.name for f in model._meta.concrete_fields
        if f.attname in values and getattr(before, f.attname) != values[f.attname]
    ]


class DeclarationSubscriber:
    """Hears every write through ``capture``: precise where the rows are known, coarse where not."""

    def watched_models(self) -> list[type[models.Model]]:
        return registry.models()

    def row_changed(self, model: type[models.Model], before: models.Model | None, after: models.Model | None, using: str) -> None:
        """A row saved or deleted, with its old values read from the database (``before``)."""
        declarations = registry.declarations_for(type(after) if after is not None else model)
        if before is not None and after is not None:
            changed = _changed_fields(model, before, after)
            declarations = tuple(d for d in declarations if d.is_affected(changed))
        retirement = Retirement()
        for declaration in declarations:
            for row in (before, after):
                if row is not None:
                    retirement |= declaration.retirement(row)
        schedule(retirement, using)

    def table_written(self, model: type[models.Model], verb: str, sql: str, using: str) -> None:
        """Rows unknown (``update()``, bulk paths, raw SQL): retire every data type the model's declarations use."""
        schedule(combined(d.coarse_retirement() for d in registry.declarations_for(model)), using)


subscriber = DeclarationSubscriber()


def _deleting(sender: type, instance: models.Model, **kwargs: Any) -> None:
    declarations = registry.declarations_for(sender)
    if declarations:
        instance.__dict__[DELETING] = _retirement(declarations, instance)


def _deleted(sender: type, instance: models.Model, using: str, **kwargs: Any) -> None:
    declarations = registry.declarations_for(sender)
    if not declarations:
        return
    retirement = instance.__dict__.pop(DELETING, None)
    if retirement is None:
        retirement = _retirement(declarations, instance)
    schedule(retirement, using)


# -- many-to-many -------------------------------------------------------------------------------


def _m2m_field(through: type[models.Model], forward_model: type[models.Model]) -> Any:
    for field in forward_model._meta.many_to_many:
        if field.remote_field.through is through:
            return field
    return None


def _m2m_changed(
    sender: type[models.Model],
    instance: models.Model,
    action: str,
    reverse: bool,
    model: type[models.Model],
    pk_set: Any,
    using: str,
    **kwargs: Any,
) -> None:
    if action not in ("pre_clear", "post_add", "post_remove", "post_clear"):
        return
    own = registry.declarations_for(type(instance))
    other = registry.declarations_for(model)
    if not own and not other:
        return
    field = _m2m_field(sender, model if reverse else type(instance))
    if field is None:
        return
    # The relation's name as seen from each side: "groups" from a user,
    # "user" (its query name) from a group.
    own_name, other_name = (field.related_query_name(), field.name) if reverse else (field.name, field.related_query_name())
    slot = f"{CLEARING}:{sender._meta.label}"
    if action == "pre_clear":
        if other:
            accessor = field.remote_field.get_accessor_name() if reverse else field.name
            instance.__dict__[slot] = set(getattr(instance, accessor).values_list("pk", flat=True))
        return
    if action == "post_clear":
        pk_set = instance.__dict__.pop(slot, set())
    retirement = Retirement()
    for declaration in own:
        if declaration.is_affected([own_name]):
            retirement |= declaration.retirement(instance)
    affected = [declaration for declaration in other if declaration.is_affected([other_name])]
    if affected and pk_set:
        for related in model._base_manager.using(using).filter(pk__in=pk_set):
            retirement |= _retirement(tuple(affected), related)
    schedule(retirement, using)


signals.m2m_changed.connect(_m2m_changed, weak=False, dispatch_uid="velro_cache.m2m_changed")

# -- wiring -------------------------------------------------------------------------------------

_RECEIVERS = (
    (signals.pre_delete, _deleting),
    (signals.post_delete, _deleted),
)


def _senders(model: type[models.Model]) -> list[type[models.Model]]:
    """The model and the subclasses and proxies known now (signals are sent with the concrete class)."""
    found = [model]
    if apps.models_ready:
        found += [other for other in apps.get_models() if other is not model and issubclass(other, model)]
    return found


def _uid(signal: Any, sender: type[models.Model]) -> str:
    return f"velro_cache:{id(signal)}:{sender._meta.label}"


def sync_receivers(model: type[models.Model]) -> None:
    """Connect receivers for a newly registered model, disconnect them when nothing applies any more."""
    for sender in _senders(model):
        wanted = bool(registry.declarations_for(sender))
        for signal, receiver in _RECEIVERS:
            if wanted:
                signal.connect(receiver, sender=sender, weak=False, dispatch_uid=_uid(signal, sender))
            else:
                signal.disconnect(sender=sender, dispatch_uid=_uid(signal, sender))


def _registry_changed(model: type[models.Model]) -> None:
    sync_receivers(model)
    capture.changed()


registry.on_change.append(_registry_changed)
capture.subscribe(subscriber)
