"""Which materialized views exist: their names, sources, refresh periods and databases.

A declaration is data only. The modules that act on it read it here: the
engine (``refresh``) routes a view to its database, the background thread
(``schedule``) reads periods and debounce windows, and ``writes`` looks up
which views a write to a model feeds. Nothing here refreshes anything, so
every other module of ``velro_cache.db`` may import this one and it imports
none of them: that is what keeps the package free of import cycles.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from django.apps import apps
from django.db import DEFAULT_DB_ALIAS, models, router

from ..conf import settings as velro_settings

ViewRef = str | type[models.Model]


def view_name(view: ViewRef) -> str:
    """The view's name in the database: the string itself, or the model's ``db_table``."""
    return view if isinstance(view, str) else view._meta.db_table


@dataclass(frozen=True)
class ViewSpec:
    """One declared view; ``period``/``debounce`` None means the setting's default."""

    name: str
    model: type[models.Model] | None
    sources: tuple[type[models.Model], ...]
    period: float | None
    debounce: float | None

    @property
    def refresh_period(self) -> float:
        return float(self.period if self.period is not None else velro_settings.VIEW_REFRESH_PERIOD)

    @property
    def refresh_debounce(self) -> float:
        return float(self.debounce if self.debounce is not None else velro_settings.VIEW_REFRESH_DEBOUNCE)

    def is_fed_by(self, model: type[models.Model]) -> bool:
        """Whether writes to ``model`` change this view's sources (a proxy writes its concrete model)."""
        concrete = model._meta.concrete_model
        return any(source._meta.concrete_model is concrete for source in self.sources)


class ViewRegistry:
    """Which views exist, how often they refresh, and which models' writes refresh them."""

    def __init__(self) -> None:
        self._specs: dict[str, ViewSpec] = {}

    def register(
        self,
        view: ViewRef,
        *,
        refresh_on: Iterable[type[models.Model] | str] = (),
        period: float | None = None,
        debounce: float | None = None,
    ) -> ViewSpec:
        """Declare a view; saves, deletes and m2m changes of ``refresh_on`` models
        refresh it after commit, debounced (``velro_cache.db.writes``). Registering
        again replaces the declaration."""
        sources = tuple(apps.get_model(source) if isinstance(source, str) else source for source in refresh_on)
        spec = ViewSpec(view_name(view), None if isinstance(view, str) else view, sources, period, debounce)
        self._specs[spec.name] = spec
        return spec

    def unregister(self, view: ViewRef) -> None:
        self._specs.pop(view_name(view), None)

    def get(self, view: ViewRef) -> ViewSpec | None:
        return self._specs.get(view_name(view))

    def model_of(self, view: str) -> type[models.Model] | None:
        spec = self._specs.get(view)
        return spec.model if spec is not None else None

    def __iter__(self) -> Iterator[ViewSpec]:
        return iter(list(self._specs.values()))


registry = ViewRegistry()
register_view = registry.register


def database_for(view: ViewRef, using: str | None) -> str:
    """The database a view lives in: ``using``, else where its model is routed for writes."""
    if using:
        return using
    model = view if not isinstance(view, str) else registry.model_of(view)
    return router.db_for_write(model) if model is not None else DEFAULT_DB_ALIAS


def views_fed_by(model: type[models.Model]) -> list[ViewSpec]:
    """The registered views that declare ``model`` (or the concrete model behind a proxy) a source."""
    return [spec for spec in registry if spec.is_fed_by(model)]


def all_views() -> list[str]:
    """Registered views plus every installed model over a view, sorted by name.

    Models over views are recognised by ``reads_materialized_view`` (set on
    ``velro_cache.db.models.MaterializedView``) rather than by importing that
    base: the base imports the refresh engine, which imports this module.
    """
    names = {spec.name for spec in registry}
    names.update(
        model._meta.db_table for model in apps.get_models() if getattr(model, "reads_materialized_view", False)
    )
    return sorted(names)


__all__ = [
    "ViewRef",
    "ViewRegistry",
    "ViewSpec",
    "all_views",
    "database_for",
    "register_view",
    "registry",
    "view_name",
    "views_fed_by",
]
