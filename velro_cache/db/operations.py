"""Migration operations for materialized views, and ``CaptureWrites`` (writes made outside Django).

They sit in ordinary migrations next to the ``CreateModel(managed=False)`` of
the model that reads the view: the model owns the migration *state*, these
operations own the *database* object. That split is why ``state_forwards`` does
nothing here and ``makemigrations`` never sees a change to detect.

Every operation is reversible, deconstructs to its constructor arguments (so
migration files can be written, squashed and printed by ``sqlmigrate``), and
fails with a clear error on a database other than PostgreSQL or SQLite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.db import router
from django.db.migrations.exceptions import IrreversibleError
from django.db.migrations.operations.base import Operation

from . import sql as view_sql

Columns = str | Sequence[str]


def _allowed(operation: Operation, app_label: str, schema_editor: Any) -> bool:
    """Honour database routers the way RunSQL does: ``hints`` may name the model."""
    return router.allow_migrate(schema_editor.connection.alias, app_label, **operation.hints)


def _execute(schema_editor: Any, statements: Sequence[str]) -> None:
    # params=None: a view's SQL may hold a literal '%' (SQLite's strftime) that
    # must not be read as a placeholder.
    for statement in statements:
        schema_editor.execute(statement, params=None)


def _check_sql(sql: Any) -> view_sql.SqlSource:
    if isinstance(sql, str):
        return sql
    if isinstance(sql, Mapping) and sql and all(isinstance(v, str) for v in sql.values()):
        unknown = set(sql) - set(view_sql.SUPPORTED_VENDORS)
        if unknown:
            raise ValueError(f"sql has entries for unsupported vendors {sorted(unknown)}; use {list(view_sql.SUPPORTED_VENDORS)}.")
        return dict(sql)
    raise ValueError("sql must be a SELECT string or a mapping of vendor ('postgresql', 'sqlite') to SELECT.")


class _ViewDefinition:
    """The arguments that define a view, shared by Create and (reversible) Drop."""

    sql: view_sql.SqlSource | None

    def _define(
        self,
        name: str,
        sql: Any,
        unique_index: Columns | None,
        indexes: Sequence[Columns],
        with_data: bool,
        hints: dict[str, Any] | None,
    ) -> None:
        self.name = view_sql.check_view_name(name)
        self.sql = _check_sql(sql) if sql is not None else None
        self.unique_index = (
            view_sql.columns_of(unique_index, f"{name}: unique_index") if unique_index else None
        )
        self.indexes = [view_sql.columns_of(spec, f"{name}: indexes") for spec in indexes]
        self.with_data = with_data
        self.hints = hints or {}

    def _index_specs(self) -> list[view_sql.IndexSpec]:
        specs = [view_sql.IndexSpec(self.unique_index, unique=True)] if self.unique_index else []
        return specs + [view_sql.IndexSpec(columns) for columns in self.indexes]

    def _definition_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"name": self.name, "sql": self.sql}
        if self.unique_index:
            kwargs["unique_index"] = list(self.unique_index)
        if self.indexes:
            kwargs["indexes"] = [list(columns) for columns in self.indexes]
        if not self.with_data:
            kwargs["with_data"] = False
        return kwargs

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        # Without sql (an irreversible Drop) the name is the whole definition.
        kwargs: dict[str, Any] = self._definition_kwargs() if self.sql is not None else {"name": self.name}
        if self.hints:
            kwargs["hints"] = self.hints
        return self.__class__.__qualname__, [], kwargs

    def _create(self, schema_editor: Any, sql: view_sql.SqlSource) -> None:
        vendor = view_sql.require_supported(schema_editor.connection.vendor)
        statements = view_sql.create_statements(
            vendor,
            schema_editor.quote_name,
            self.name,
            view_sql.select_for(sql, vendor),
            self._index_specs(),
            self.with_data,
        )
        _execute(schema_editor, statements)

    def _drop(self, schema_editor: Any) -> None:
        vendor = view_sql.require_supported(schema_editor.connection.vendor)
        _execute(schema_editor, view_sql.drop_statements(vendor, schema_editor.quote_name, self.name))


class CreateMaterializedView(_ViewDefinition, Operation):
    """Create a materialized view (PostgreSQL) or its emulation (SQLite), with indexes.

    Give ``unique_index`` whenever the rows have a key: without one PostgreSQL
    can only refresh by locking readers out for the whole refresh.
    """

    reversible = True
    reduces_to_sql = True
    sql: view_sql.SqlSource  # required here, so never None

    def __init__(
        self,
        name: str,
        sql: str | Mapping[str, str],
        unique_index: Columns | None = None,
        indexes: Sequence[Columns] = (),
        with_data: bool = True,
        hints: dict[str, Any] | None = None,
    ) -> None:
        # The same parameters as DropMaterializedView, deliberately spelled out in
        # each: they are the public signatures, and only Drop's sql is optional.
        self._define(name, sql, unique_index, indexes, with_data, hints)

    def state_forwards(self, app_label: str, state: Any) -> None:
        """Nothing: the model over the view is a separate CreateModel(managed=False)."""

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        if _allowed(self, app_label, schema_editor):
            self._create(schema_editor, self.sql)

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        if _allowed(self, app_label, schema_editor):
            self._drop(schema_editor)

    def describe(self) -> str:
        return f"Create materialized view {self.name}"

    @property
    def migration_name_fragment(self) -> str:
        return f"create_materialized_view_{self.name}"


class DropMaterializedView(_ViewDefinition, Operation):
    """Drop a materialized view (with its indexes).

    Reversible only when given the view's definition (the same arguments as
    CreateMaterializedView): a database cannot recreate a query it has dropped.
    """

    reduces_to_sql = True

    def __init__(
        self,
        name: str,
        sql: str | Mapping[str, str] | None = None,
        unique_index: Columns | None = None,
        indexes: Sequence[Columns] = (),
        with_data: bool = True,
        hints: dict[str, Any] | None = None,
    ) -> None:
        self._define(name, sql, unique_index, indexes, with_data, hints)

    @property
    def reversible(self) -> bool:
        return self.sql is not None

    def state_forwards(self, app_label: str, state: Any) -> None:
        """Nothing: removing the model over the view is a separate DeleteModel."""

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        if _allowed(self, app_label, schema_editor):
            self._drop(schema_editor)

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        if self.sql is None:
            raise IrreversibleError(
                f"DropMaterializedView({self.name!r}) cannot be reversed: pass the view's sql "
                f"(and unique_index/indexes) so it can be recreated."
            )
        if _allowed(self, app_label, schema_editor):
            self._create(schema_editor, self.sql)

    def describe(self) -> str:
        return f"Drop materialized view {self.name}"

    @property
    def migration_name_fragment(self) -> str:
        return f"drop_materialized_view_{self.name}"


class RefreshMaterializedView(Operation):
    """Refresh a view inside a migration, e.g. after a data migration of its sources.

    ``concurrently=None`` decides at migrate time: concurrently when the view
    has a usable unique index and is populated, plainly otherwise. Reversing it
    does nothing (there is nothing to undo), so it never blocks a rollback.
    """

    reversible = True

    def __init__(self, name: str, concurrently: bool | None = None, hints: dict[str, Any] | None = None) -> None:
        self.name = view_sql.check_view_name(name)
        self.concurrently = concurrently
        self.hints = hints or {}

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        kwargs: dict[str, Any] = {"name": self.name}
        if self.concurrently is not None:
            kwargs["concurrently"] = self.concurrently
        if self.hints:
            kwargs["hints"] = self.hints
        return self.__class__.__qualname__, [], kwargs

    def state_forwards(self, app_label: str, state: Any) -> None:
        """Nothing: a refresh changes rows, not schema."""

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        if not _allowed(self, app_label, schema_editor):
            return
        connection = schema_editor.connection
        vendor = view_sql.require_supported(connection.vendor)
        concurrently = self.concurrently
        if concurrently is None:
            # sqlmigrate has no database to ask; the plain form is always valid.
            concurrently = not schema_editor.collect_sql and (
                view_sql.is_populated(connection, self.name) and view_sql.has_unique_index(connection, self.name)
            )
        _execute(schema_editor, view_sql.refresh_statements(vendor, schema_editor.quote_name, self.name, concurrently))

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        """Nothing to undo."""

    def describe(self) -> str:
        return f"Refresh materialized view {self.name}"

    @property
    def migration_name_fragment(self) -> str:
        return f"refresh_materialized_view_{self.name}"




class CaptureWrites(Operation):
    """Make writes to ``table`` made outside Django (psql, another service) retire what depends on it.

    Installs a statement-level trigger that NOTIFYs ``velro_cache_writes``
    with the table name on commit (``velro_cache.db.notify``); processes with
    ``VELRO_CACHE["LISTEN_EXTERNAL_WRITES"] = True`` listen and retire.
    Reversible (drops the trigger). PostgreSQL only: elsewhere it does nothing
    (SQLite has no other writers to announce and no NOTIFY).
    """

    reversible = True
    reduces_to_sql = True

    def __init__(self, table: str, hints: Mapping[str, Any] | None = None) -> None:
        if not isinstance(table, str) or not table:
            raise ValueError(f"CaptureWrites needs a table name, got {table!r}")
        self.table = table
        self.hints = dict(hints or {})

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        kwargs = {"hints": self.hints} if self.hints else {}
        return self.__class__.__qualname__, [self.table], kwargs

    def state_forwards(self, app_label: str, state: Any) -> None:
        pass  # a trigger is no part of the model state

    def _run(self, app_label: str, schema_editor: Any, build: Any) -> None:
        if schema_editor.connection.vendor != "postgresql" or not _allowed(self, app_label, schema_editor):
            return
        _execute(schema_editor, build(self.table, schema_editor.quote_name))

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        from .notify import create_trigger_sql

        self._run(app_label, schema_editor, create_trigger_sql)

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        from .notify import drop_trigger_sql

        self._run(app_label, schema_editor, drop_trigger_sql)

    def describe(self) -> str:
        return f"Announce writes made outside Django to {self.table} (trigger + NOTIFY)"


__all__ = ["CaptureWrites", "CreateMaterializedView", "DropMaterializedView", "RefreshMaterializedView"]
