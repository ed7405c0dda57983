"""``MaterializedView``: the model base for reading a materialized view.

A view's rows are computed from its source tables; writing to them directly
would either fail deep inside the database (PostgreSQL) or silently diverge
from the sources until the next refresh (the SQLite emulation is a real
table). Both are worse than a clear error at the call site, so every ORM write
path is refused here: ``save``, ``delete``, and on the queryset ``create``,
``update``, ``delete``, ``bulk_create``, ``bulk_update``, ``get_or_create``,
``update_or_create`` (and the private ``_insert``/``_update`` they all reach).
"""

from __future__ import annotations

from typing import Any, NoReturn

from django.db import models
from django.db.models.base import ModelBase

from ..exceptions import ReadOnlyViewError
from .refresh import RefreshResult, refresh_view


def _refuse(model: type[models.Model], operation: str) -> NoReturn:
    raise ReadOnlyViewError(
        f"{model.__name__} reads the materialized view {model._meta.db_table!r} and is read-only "
        f"({operation} refused): write to its source tables, then refresh it "
        f"({model.__name__}.refresh() or `manage.py velro_refresh_views {model._meta.db_table}`)."
    )


class MaterializedViewQuerySet(models.QuerySet):
    def create(self, **kwargs: Any) -> NoReturn:
        _refuse(self.model, "create()")

    def get_or_create(self, defaults: Any = None, **kwargs: Any) -> NoReturn:
        _refuse(self.model, "get_or_create()")

    def update_or_create(self, defaults: Any = None, create_defaults: Any = None, **kwargs: Any) -> NoReturn:
        _refuse(self.model, "update_or_create()")

    def bulk_create(self, objs: Any, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse(self.model, "bulk_create()")

    def bulk_update(self, objs: Any, fields: Any, batch_size: Any = None) -> NoReturn:
        _refuse(self.model, "bulk_update()")

    def update(self, **kwargs: Any) -> NoReturn:
        _refuse(self.model, "update()")

    def delete(self) -> NoReturn:
        _refuse(self.model, "delete()")

    def _insert(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse(self.model, "insert")

    def _update(self, values: Any) -> NoReturn:
        _refuse(self.model, "update")

    def _raw_delete(self, using: Any) -> NoReturn:
        _refuse(self.model, "delete")

    # Async twins go through the sync methods above, except these shortcuts.
    async def acreate(self, **kwargs: Any) -> NoReturn:
        _refuse(self.model, "acreate()")

    async def aupdate(self, **kwargs: Any) -> NoReturn:
        _refuse(self.model, "aupdate()")

    async def adelete(self) -> NoReturn:
        _refuse(self.model, "adelete()")


MaterializedViewManager = models.Manager.from_queryset(MaterializedViewQuerySet)


class MaterializedViewBase(ModelBase):
    """Make ``managed = False`` the default even for a subclass whose Meta does not
    inherit ours: Django must never create, alter or flush a table for a view."""

    def __new__(mcs, name: str, bases: tuple[type, ...], attrs: dict[str, Any], **kwargs: Any) -> type:
        meta = attrs.get("Meta")
        if meta is not None and not getattr(meta, "abstract", False) and not hasattr(meta, "managed"):
            meta.managed = False
        return super().__new__(mcs, name, bases, attrs, **kwargs)


class MaterializedView(models.Model, metaclass=MaterializedViewBase):
    """Subclass it with ``Meta.db_table`` naming a view created by CreateMaterializedView."""

    objects = MaterializedViewManager()
    # How ``db.registry.all_views`` finds the models over views without importing
    # this module (it imports the refresh engine, which imports the registry).
    reads_materialized_view = True

    class Meta:
        abstract = True
        managed = False

    def save(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse(type(self), "save()")

    async def asave(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse(type(self), "asave()")

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse(type(self), "delete()")

    async def adelete(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse(type(self), "adelete()")

    @classmethod
    def view_name(cls) -> str:
        return cls._meta.db_table

    @classmethod
    def refresh(
        cls, *, concurrently: bool | None = None, using: str | None = None, wait: bool = True
    ) -> RefreshResult:
        """Refresh the view now, in this thread (see ``velro_cache.db.refresh.refresh_view``).

        ``concurrently=None`` picks CONCURRENTLY whenever the view allows it;
        the result says which was used and, if plainly, why.
        """
        return refresh_view(cls, using=using, concurrently=concurrently, wait=wait)
