"""Which writes refresh which views: the signal receivers, and the hooks for writes that send none.

A write never pays for a refresh. A save, delete or m2m change of a model
that a registered view declares a source (``register_view(refresh_on=...)``)
queues a refresh with ``transaction.on_commit`` (a rolled-back transaction
queues nothing) into the background thread (``schedule``), which runs one
refresh per burst of writes. The receivers listen to every model and look the
sender up in the registry, so registering or unregistering a view needs no
signal bookkeeping.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from django.db import models, transaction
from django.db.models.signals import m2m_changed, post_delete, post_save

from ..conf import settings as velro_settings
from .registry import ViewRef, database_for, registry, view_name, views_fed_by
from .schedule import refresh_in_background

_M2M_WRITES = {"post_add", "post_remove", "post_clear"}


def refresh_after_commit(view: ViewRef, using: str | None = None) -> None:
    """Schedule a debounced background refresh when the current transaction commits.

    For writes that send no signals (``QuerySet.update``, ``bulk_create``, raw
    SQL): call this next to them. Outside a transaction it schedules at once;
    after a rollback it schedules nothing.
    """
    if not velro_settings.VIEW_REFRESH_ON_WRITE:
        return
    name = view_name(view)
    database = database_for(view, using)
    spec = registry.get(name)
    delay = spec.refresh_debounce if spec is not None else float(velro_settings.VIEW_REFRESH_DEBOUNCE)
    transaction.on_commit(partial(refresh_in_background, name, database, delay), using=database)


def refresh_after_write(model: type[models.Model], using: str | None = None) -> None:
    """Schedule refreshes of every view fed by ``model``: the hook for bulk writes
    (``QuerySet.update``, ``bulk_create``), which send no signals."""
    for spec in views_fed_by(model):
        refresh_after_commit(spec.name, using=using)


def _source_written(sender: Any, using: str | None = None, action: str | None = None, **kwargs: Any) -> None:
    if action is not None and action not in _M2M_WRITES:
        return  # m2m_changed's pre_* actions: the write has not happened yet
    refresh_after_write(sender, using=using)


for _signal, _kind in ((post_save, "save"), (post_delete, "delete"), (m2m_changed, "m2m")):
    _signal.connect(_source_written, dispatch_uid=f"velro_cache.views.writes:{_kind}")


__all__ = ["refresh_after_commit", "refresh_after_write"]
