"""Bulk writes send no signals; this queryset mixin invalidates for them precisely.

Write capture (``capture``) now sees these writes whatever queryset makes
them and retires what depends on the model's table (coarse), so the mixin
and ``invalidating()`` are no longer needed for correctness; they remain,
under the same public names, for projects that want the affected rows'
own namespaces retired as well (two extra queries per ``update``).

``QuerySet.update``, ``bulk_create`` and ``bulk_update`` write rows without
``post_save``. Through the mixin each one computes what the affected rows'
declarations retire and schedules it for commit, like a save would:

- ``update(**values)``: the rows are read before (old values: a row moved out
  of a team must invalidate the old team) and after (new values), inside one
  transaction with the rows locked (``SELECT ... FOR UPDATE`` where the
  database has it). That is two extra queries; for a mass update prefer
  ``velro_cache.invalidate(Model)``, which retires the model's data types in
  O(1).
- ``bulk_create(objs)``: the new objects' values; when the database does not
  return primary keys and a template needs one, the model's data types.
- ``bulk_update(objs, fields)``: the rows' old values (one query) and the objects'.

``QuerySet.delete`` needs nothing: it sends ``pre_delete``/``post_delete`` for
every row of a registered model, cascades included.

Use it on your own models (``objects = InvalidatingManager()``) or, for models
you cannot change, wrap a queryset: ``invalidating(User.objects).bulk_create(users)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from django.db import connections, models, transaction

from .declarations import ModelCache, registry
from .retirement import Retirement, combined
from .transactions import schedule

# Django's bulk_update calls update() per batch; our bulk_update already
# accounts for those rows.
_inside_bulk = ContextVar("velro_cache_inside_bulk", default=False)


def _retirement(declarations: Sequence[ModelCache], objs: Iterable[models.Model]) -> Retirement:
    return combined(declaration.retirement(obj) for obj in objs for declaration in declarations)


class InvalidatingQuerySetMixin:
    """Mix into a QuerySet (before ``models.QuerySet``) to invalidate on bulk writes."""

    model: type[models.Model]
    db: str

    if TYPE_CHECKING:  # provided by the QuerySet this is mixed into; declared for mypy only

        def select_for_update(
            self, nowait: bool = False, skip_locked: bool = False, of: tuple[str, ...] = (), no_key: bool = False
        ) -> Any: ...

    def _declarations(self, changed: Iterable[str] | None = None) -> tuple[ModelCache, ...]:
        return tuple(d for d in registry.declarations_for(self.model) if d.is_affected(changed))

    def _locked(self) -> Any:
        features = connections[self.db].features
        if features.has_select_for_update_of:
            return self.select_for_update(of=("self",))
        return self.select_for_update() if features.has_select_for_update else self

    def update(self, **values: Any) -> int:
        declarations = self._declarations(values)
        if not declarations or _inside_bulk.get():
            return super().update(**values)  # type: ignore[misc]
        with transaction.atomic(using=self.db, savepoint=False):
            # By pk, then as instances: after .values()/.values_list() this
            # queryset yields dicts or tuples, not instances.
            pks = list(self._locked().values_list("pk", flat=True))
            before = list(self.model._base_manager.using(self.db).filter(pk__in=pks))
            rows = super().update(**values)  # type: ignore[misc]
            after = self.model._base_manager.using(self.db).filter(pk__in=[obj.pk for obj in before])
            schedule(_retirement(declarations, [*before, *after]), self.db)
        return rows

    def bulk_create(self, objs: Iterable[models.Model], *args: Any, **kwargs: Any) -> list[models.Model]:
        declarations = self._declarations()
        created = super().bulk_create(objs, *args, **kwargs)  # type: ignore[misc]
        if declarations:
            if any(obj.pk is None for obj in created) and any("pk" in t.names for d in declarations for t in d.templates):
                retirement = Retirement()
                for declaration in declarations:
                    retirement |= declaration.coarse_retirement()
            else:
                retirement = _retirement(declarations, created)
            schedule(retirement, self.db)
        return created

    def bulk_update(self, objs: Iterable[models.Model], fields: Sequence[str], *args: Any, **kwargs: Any) -> int:
        objs = list(objs)
        declarations = self._declarations(fields)
        if not declarations:
            return super().bulk_update(objs, fields, *args, **kwargs)  # type: ignore[misc]
        with transaction.atomic(using=self.db, savepoint=False):
            before = list(self.model._base_manager.using(self.db).filter(pk__in=[obj.pk for obj in objs]))
            reset = _inside_bulk.set(True)
            try:
                rows = super().bulk_update(objs, fields, *args, **kwargs)  # type: ignore[misc]
            finally:
                _inside_bulk.reset(reset)
            schedule(_retirement(declarations, [*before, *objs]), self.db)
        return rows


class InvalidatingQuerySet(InvalidatingQuerySetMixin, models.QuerySet):
    pass


class InvalidatingManager(models.Manager.from_queryset(InvalidatingQuerySet)):  # type: ignore[misc]
    pass


_wrapped_classes: dict[type, type] = {}


def invalidating(queryset: models.QuerySet | models.Manager) -> models.QuerySet:
    """The same queryset, with the mixin's bulk methods (for models you do not own)."""
    if isinstance(queryset, models.Manager):
        queryset = queryset.all()
    cls = type(queryset)
    if issubclass(cls, InvalidatingQuerySetMixin):
        return queryset
    wrapped = _wrapped_classes.get(cls)
    if wrapped is None:
        wrapped = _wrapped_classes[cls] = type(f"Invalidating{cls.__name__}", (InvalidatingQuerySetMixin, cls), {})
    clone = queryset._chain()
    clone.__class__ = wrapped
    return clone
