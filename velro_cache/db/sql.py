"""The SQL behind a materialized view, per database, in one place.

PostgreSQL has the real thing. SQLite has no materialized views, so one is
emulated by two objects: a plain view ``<name>__source`` that keeps the SELECT
inside the database (as PostgreSQL keeps a materialized view's query, so a
refresh needs nothing but the name), and a table ``<name>`` filled from it. A
refresh replaces the table's rows in one transaction; in WAL mode readers keep
seeing the previous rows until it commits, which is what ``CONCURRENTLY`` gives
on PostgreSQL. Any other database gets a clear error instead of half a feature.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..exceptions import UnsupportedDatabase

POSTGRESQL, SQLITE = "postgresql", "sqlite"
SUPPORTED_VENDORS = (POSTGRESQL, SQLITE)
SOURCE_SUFFIX = "__source"
MAX_NAME = 63  # PostgreSQL truncates identifiers silently beyond this; we never let it.

_COLUMN = re.compile(r"^-?[A-Za-z_][A-Za-z0-9_]*$")

Quote = Callable[[str], str]
SqlSource = str | Mapping[str, str]


def require_supported(vendor: str) -> str:
    if vendor not in SUPPORTED_VENDORS:
        raise UnsupportedDatabase(
            f"Materialized views are supported on PostgreSQL (native) and SQLite (emulated), "
            f"not on {vendor!r}. Route these migrations away from that database "
            f"(a database router's allow_migrate) or use PostgreSQL."
        )
    return vendor


def select_for(sql: SqlSource, vendor: str) -> str:
    """The SELECT for one vendor: a plain string serves all, a mapping picks by vendor.

    A mapping exists because date arithmetic ("the last 24 hours") has no
    portable spelling; everything else in a view's query usually is portable.
    """
    require_supported(vendor)
    if isinstance(sql, str):
        return sql.strip().rstrip(";")
    if vendor not in sql:
        raise UnsupportedDatabase(
            f"This materialized view has SQL for {', '.join(sorted(sql))} but not for {vendor!r}."
        )
    return sql[vendor].strip().rstrip(";")


# -- index specifications ------------------------------------------------------------


@dataclass(frozen=True)
class IndexSpec:
    """Plain columns only: ``REFRESH ... CONCURRENTLY`` accepts no expression or WHERE."""

    columns: tuple[str, ...]
    unique: bool = False

    def name(self, view: str) -> str:
        kind = "uniq" if self.unique else "idx"
        plain = "_".join(column.lstrip("-") for column in self.columns)
        candidate = f"{view}_{plain}_{kind}"
        if len(candidate) <= MAX_NAME:
            return candidate
        digest = hashlib.sha256(candidate.encode()).hexdigest()[:8]
        return f"{candidate[: MAX_NAME - len(kind) - 10]}_{digest}_{kind}"

    def sql(self, view: str, quote: Quote) -> str:
        columns = ", ".join(
            f"{quote(c[1:])} DESC" if c.startswith("-") else quote(c) for c in self.columns
        )
        unique = "UNIQUE " if self.unique else ""
        return f"CREATE {unique}INDEX {quote(self.name(view))} ON {quote(view)} ({columns})"


def columns_of(spec: str | Sequence[str], what: str) -> tuple[str, ...]:
    """Validate one index's columns, so a bad spec fails when the migration is loaded."""
    columns = (spec,) if isinstance(spec, str) else tuple(spec)
    if not columns:
        raise ValueError(f"{what}: an index needs at least one column.")
    for column in columns:
        if not isinstance(column, str) or not _COLUMN.match(column):
            raise ValueError(
                f"{what}: {column!r} is not a column name. Indexes on materialized views take "
                f"plain column names (optionally '-name' for descending): the unique index "
                f"that REFRESH ... CONCURRENTLY needs may not use expressions or WHERE."
            )
    return columns


def check_view_name(name: str) -> str:
    if not isinstance(name, str) or not _COLUMN.match(name) or name.startswith("-"):
        raise ValueError(f"{name!r} is not a valid materialized view name (letters, digits, _).")
    if len(name) + len(SOURCE_SUFFIX) > MAX_NAME:
        raise ValueError(f"Materialized view name {name!r} is too long (at most {MAX_NAME - len(SOURCE_SUFFIX)} characters).")
    return name


# -- statements ---------------------------------------------------------------------------


def create_statements(
    vendor: str, quote: Quote, name: str, select: str, indexes: Iterable[IndexSpec], with_data: bool
) -> list[str]:
    index_sql = [index.sql(name, quote) for index in indexes]
    if require_supported(vendor) == POSTGRESQL:
        data = "WITH DATA" if with_data else "WITH NO DATA"
        return [f"CREATE MATERIALIZED VIEW {quote(name)} AS {select} {data}", *index_sql]
    source = quote(name + SOURCE_SUFFIX)
    fill = "" if with_data else " LIMIT 0"
    return [
        f"CREATE VIEW {source} AS {select}",
        f"CREATE TABLE {quote(name)} AS SELECT * FROM {source}{fill}",
        *index_sql,
    ]


def drop_statements(vendor: str, quote: Quote, name: str) -> list[str]:
    if require_supported(vendor) == POSTGRESQL:
        return [f"DROP MATERIALIZED VIEW IF EXISTS {quote(name)}"]
    return [f"DROP TABLE IF EXISTS {quote(name)}", f"DROP VIEW IF EXISTS {quote(name + SOURCE_SUFFIX)}"]


def refresh_statements(vendor: str, quote: Quote, name: str, concurrently: bool) -> list[str]:
    if require_supported(vendor) == POSTGRESQL:
        mode = "CONCURRENTLY " if concurrently else ""
        return [f"REFRESH MATERIALIZED VIEW {mode}{quote(name)}"]
    return [
        f"DELETE FROM {quote(name)}",
        f"INSERT INTO {quote(name)} SELECT * FROM {quote(name + SOURCE_SUFFIX)}",
    ]


# -- introspection --------------------------------------------------------------------------


def _one(connection: Any, sql: str, params: Sequence[Any] = ()) -> Any:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return row[0] if row else None


def view_exists(connection: Any, name: str) -> bool:
    if require_supported(connection.vendor) == POSTGRESQL:
        return bool(
            _one(
                connection,
                "SELECT EXISTS (SELECT 1 FROM pg_matviews WHERE matviewname = %s AND schemaname = ANY (current_schemas(false)))",
                [name],
            )
        )
    found = _one(
        connection,
        "SELECT COUNT(*) FROM sqlite_master WHERE (type = 'table' AND name = %s) OR (type = 'view' AND name = %s)",
        [name, name + SOURCE_SUFFIX],
    )
    return found == 2


def is_populated(connection: Any, name: str) -> bool:
    """A PostgreSQL view created WITH NO DATA can't be refreshed concurrently (nor read)."""
    if require_supported(connection.vendor) == POSTGRESQL:
        return bool(_one(connection, "SELECT relispopulated FROM pg_class WHERE oid = to_regclass(%s)", [connection.ops.quote_name(name)]))
    return True


def has_unique_index(connection: Any, name: str) -> bool:
    """Whether the view has the index ``REFRESH ... CONCURRENTLY`` insists on:
    unique, valid, on plain columns, without a WHERE clause."""
    if require_supported(connection.vendor) == POSTGRESQL:
        return bool(
            _one(
                connection,
                "SELECT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = to_regclass(%s) "
                "AND indisunique AND indisvalid AND indpred IS NULL AND indexprs IS NULL)",
                [connection.ops.quote_name(name)],
            )
        )
    with connection.cursor() as cursor:
        cursor.execute(f"PRAGMA index_list({connection.ops.quote_name(name)})")
        candidates = [row[1] for row in cursor.fetchall() if row[2] and not row[4]]
        for index in candidates:
            cursor.execute(f"PRAGMA index_xinfo({connection.ops.quote_name(index)})")
            if all(row[1] >= 0 for row in cursor.fetchall() if row[5]):  # key columns, no expressions
                return True
    return False


def row_count(connection: Any, name: str) -> int:
    return int(_one(connection, f"SELECT COUNT(*) FROM {connection.ops.quote_name(name)}"))
