"""Write capture: every statement Django sends to the database is seen, whatever made it.

Signals miss writes (``QuerySet.update``, bulk paths, raw SQL, proxies
connected with an exact sender) and remember values from load time, which a
stale instance gets wrong. So the one place that sees every write is the
connection itself: ``connection.execute_wrapper`` (Django's public hook),
installed on every connection as it is created (and on those that exist at
``ready()``). For each statement:

- not a write (``SELECT``, ``SAVEPOINT``, ...), or a table nothing depends on:
  executed as is (one regex match; reads pay no query);
- part of a ``save()`` of one instance (``pre_save`` .. ``post_save``, connected
  without a sender: proxies and multi-table children included): the row's old
  values are read from the database (one query by pk, ``FOR UPDATE``, in the
  same transaction as the ``UPDATE``, so two concurrent saves of stale
  instances each see the other's value), and subscribers get ``row_changed``
  with the old row and the saved instance: precise;
- ``DELETE FROM t WHERE ...`` (``delete()``, ``QuerySet.delete``, cascades,
  fast deletes, raw SQL): on PostgreSQL, a delete by primary key values (how
  Django deletes what it collected) hands back its own rows with
  ``RETURNING *`` (no extra query); any other ``WHERE`` selects the rows first
  (one query, locked). Subscribers get ``row_changed`` for each: precise;
- anything else (``QuerySet.update``, ``bulk_update``, ``bulk_create``, m2m
  through rows, raw ``INSERT``/``UPDATE``/``TRUNCATE``): the rows are unknown,
  subscribers get ``table_written`` and retire everything that depends on the
  table (coarse, O(1)).

Subscribers schedule their retirements with the on-commit machinery
(``transactions.schedule``): a rollback, or a savepoint rolled back,
retires nothing. Workers and management commands run the same code, so
their writes are captured in their own process and retired for everyone
through the cache.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from django.db import connections, models, transaction
from django.db.backends.signals import connection_created
from django.db.models import signals

WRITE_VERBS = frozenset({"INSERT", "UPDATE", "DELETE", "TRUNCATE", "MERGE", "WITH", "COPY", "REPLACE", "UPSERT"})
_VERB = re.compile(r"\s*(?:/\*.*?\*/\s*)*([A-Za-z]+)", re.DOTALL)
_NAME = r'(?:"[^"]+"|`[^`]+`|\[[^\]]+\]|[\w$]+)'
_QUALIFIED = rf"{_NAME}(?:\s*\.\s*{_NAME})*"
_TARGET = re.compile(
    rf"\b(?:INSERT\s+(?:OR\s+\w+\s+)?INTO|REPLACE\s+INTO|UPSERT\s+INTO|MERGE\s+INTO|UPDATE(?:\s+OR\s+\w+)?|DELETE\s+FROM|"
    rf"TRUNCATE(?:\s+TABLE)?|COPY)\s+(?:ONLY\s+)?({_QUALIFIED}(?:\s*,\s*{_QUALIFIED})*)",
    re.IGNORECASE,
)
_DELETE = re.compile(rf"\s*DELETE\s+FROM\s+({_QUALIFIED})\s+WHERE\s+(.+)", re.IGNORECASE | re.DOTALL)
_NOT_A_PLAIN_WHERE = re.compile(r"\bRETURNING\b|\bUSING\b|;", re.IGNORECASE)
# ``WHERE <pk> IN (%s, ...)`` or ``= %s``: how Django deletes collected rows, at most one row per value.
_BY_VALUES = re.compile(rf"\s*({_QUALIFIED})\s*(?:=\s*%s|IN\s*\(\s*%s(?:\s*,\s*%s)*\s*\))\s*$", re.IGNORECASE)
# More rows than this in one DELETE are retired coarsely: reading them all
# would cost more than retiring the tables' data types.
PRECISE_ROWS = 256


class Subscriber(Protocol):
    """What invalidation and authorization implement to hear writes."""

    def watched_models(self) -> Iterable[type[models.Model]]: ...

    def row_changed(self, model: type[models.Model], before: models.Model | None, after: models.Model | None, using: str) -> None: ...

    def table_written(self, model: type[models.Model], verb: str, sql: str, using: str) -> None: ...


_subscribers: list[Subscriber] = []
_watched: dict[str, list[tuple[Subscriber, type[models.Model]]]] | None = None
_lock = threading.Lock()
_local = threading.local()
_UNREAD = object()


def subscribe(subscriber: Subscriber) -> None:
    """Add a subscriber (idempotent); call ``changed()`` whenever its watched models change."""
    if subscriber not in _subscribers:
        _subscribers.append(subscriber)
    changed()


def changed() -> None:
    """Forget the table map: a registration changed what is watched."""
    global _watched
    _watched = None


def _tables_of(model: type[models.Model]) -> set[str]:
    """The tables whose rows a model's data is made of: its own, its MTI parents', its m2m through tables."""
    concrete = model._meta.concrete_model or model
    tables = {concrete._meta.db_table} | {parent._meta.db_table for parent in concrete._meta.get_parent_list()}
    for related in concrete._meta.get_fields(include_hidden=True):
        through = getattr(getattr(related, "remote_field", None), "through", None)
        if related.many_to_many and isinstance(through, type) and issubclass(through, models.Model):
            tables.add(through._meta.db_table)  # type: ignore[attr-defined]
    return tables


def watched() -> dict[str, list[tuple[Subscriber, type[models.Model]]]]:
    """Table name (lower case) -> the subscribers and models that depend on it."""
    global _watched
    found = _watched
    if found is None:
        with _lock:
            found = {}
            for subscriber in _subscribers:
                for model in dict.fromkeys(subscriber.watched_models()):
                    for table in _tables_of(model):
                        found.setdefault(table.lower(), []).append((subscriber, model))
            _watched = found
    return found


def _unquote(name: str) -> str:
    last = re.split(r"\s*\.\s*(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)", name.strip())[-1]
    if last[:1] in '"`[':
        return last[1:-1].lower()
    return last.lower()


def tables_written(sql: str) -> list[str]:
    """The tables a statement writes, lower case (Django quotes names; raw SQL may not)."""
    tables: list[str] = []
    for match in _TARGET.finditer(sql):
        for name in re.split(r"\s*,\s*", match.group(1)):
            table = _unquote(name)
            if table and table not in tables:
                tables.append(table)
    return tables


def write_verb(sql: str) -> str | None:
    """The statement's first keyword when it may write (``None`` for reads, savepoints, ...)."""
    match = _VERB.match(sql)
    if match is None:
        return None
    verb = match.group(1).upper()
    return verb if verb in WRITE_VERBS else None


# -- saves of one instance: precise ----------------------------------------------------------


@dataclass
class SaveMark:
    """A ``save()`` between ``pre_save`` and ``post_save``: its statements are covered precisely."""

    instance: models.Model
    concrete: type[models.Model]
    using: str
    tables: frozenset[str]
    before: Any = _UNREAD
    subscribers: list[Subscriber] = field(default_factory=list)
    # Each table is written at most once by UPDATE and once by INSERT in a
    # save (an UPDATE that matched nothing, then the INSERT); more is someone
    # else's statement (a post_save receiver's), which is not covered.
    seen: set[tuple[str, str]] = field(default_factory=set)
    coarse: list[tuple[Subscriber, type[models.Model]]] = field(default_factory=list)
    repeats: bool = False  # m2m add/remove: batches of through rows

    def covers(self, table: str, verb: str) -> bool:
        if table not in self.tables or verb not in ("UPDATE", "INSERT", "DELETE"):
            return False
        if (table, verb) in self.seen and not self.repeats:
            return False
        self.seen.add((table, verb))
        return True


def _marks() -> list[SaveMark]:
    marks = getattr(_local, "marks", None)
    if marks is None:
        marks = _local.marks = []
    return marks


def _concrete(model: type[models.Model]) -> type[models.Model]:
    return model._meta.concrete_model or model


def _saving(sender: type[models.Model], instance: models.Model, using: str, **kwargs: Any) -> None:
    concrete = _concrete(sender)
    depends = watched()
    tables = frozenset(t._meta.db_table.lower() for t in [concrete, *concrete._meta.get_parent_list()])
    found = [pair for table in tables for pair in depends.get(table, ())]
    if not found:
        return
    mark = SaveMark(instance, concrete, using, tables)
    for subscriber, model in found:
        if issubclass(concrete, _concrete(model)):
            if subscriber not in mark.subscribers:
                mark.subscribers.append(subscriber)
        else:  # the table is only a part of what the model depends on (an explicit through model): coarse
            mark.coarse.append((subscriber, model))
    _marks().append(mark)


def _saved(sender: type[models.Model], instance: models.Model, created: bool, using: str, **kwargs: Any) -> None:
    marks = getattr(_local, "marks", None)
    if not marks:
        return
    for index in range(len(marks) - 1, -1, -1):
        if marks[index].instance is instance:
            mark = marks.pop(index)
            break
    else:
        return
    before = mark.before if isinstance(mark.before, models.Model) else None
    for subscriber in mark.subscribers:
        subscriber.row_changed(mark.concrete, before, instance, using)
    for subscriber, model in mark.coarse:
        subscriber.table_written(model, "INSERT" if created else "UPDATE", "", using)


def _read_before(mark: SaveMark) -> models.Model | None:
    """The row as the database has it now, locked until this transaction ends (one query by pk)."""
    pk = mark.instance.pk
    if pk is None:
        return None
    rows = mark.concrete._base_manager.db_manager(mark.using).filter(pk=pk)
    if connections[mark.using].features.has_select_for_update:
        rows = rows.select_for_update()
    return rows.first()


def _covering(table: str, verb: str) -> SaveMark | None:
    marks = getattr(_local, "marks", None)
    if marks and marks[-1].covers(table, verb):
        return marks[-1]
    return None


def _m2m_changing(sender: type[models.Model], action: str, **kwargs: Any) -> None:
    """add/remove/clear: the m2m_changed receivers retire precisely; their through-table statements are covered."""
    table = sender._meta.db_table.lower()
    if table not in watched():
        return
    instance = kwargs["instance"]
    if action.startswith("pre_"):
        _marks().append(SaveMark(instance, sender, kwargs["using"], frozenset({table}), repeats=True))
        return
    marks = getattr(_local, "marks", None) or []
    for index in range(len(marks) - 1, -1, -1):
        if marks[index].instance is instance and marks[index].concrete is sender:
            del marks[index]
            break


# -- the wrapper -------------------------------------------------------------------------------


def capture(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
    """The execute wrapper: see the statement, run it, tell the subscribers."""
    verb = write_verb(sql)
    if verb is None:
        return execute(sql, params, many, context)
    depends = watched()
    tables = [table for table in tables_written(sql) if table in depends] if depends else []
    if not tables:
        return execute(sql, params, many, context)
    using = context["connection"].alias
    mark = _covering(tables[0], verb) if len(tables) == 1 else None
    if mark is not None:
        return _execute_covered(mark, verb, execute, sql, params, many, context)
    if verb == "DELETE" and not many and len(tables) == 1:
        return _execute_delete(tables[0], depends[tables[0]], execute, sql, params, context, using)
    result = execute(sql, params, many, context)
    for table in tables:
        for subscriber, model in depends[table]:
            subscriber.table_written(model, verb, sql, using)
    return result


def _execute_covered(
    mark: SaveMark, verb: str, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    try:
        if verb != "UPDATE" or mark.before is not _UNREAD or not mark.subscribers:
            if verb == "INSERT" and mark.before is _UNREAD:
                mark.before = None  # a new row: nothing was there before
            return execute(sql, params, many, context)
        # The save's first UPDATE: read the old row in the same transaction, locked.
        with transaction.atomic(using=mark.using, savepoint=False):
            mark.before = _read_before(mark)
            return execute(sql, params, many, context)
    except BaseException:
        if mark in _marks():
            _marks().remove(mark)  # the save failed: no post_save will pop it
        raise


def _execute_delete(
    table: str, depends: list[tuple[Subscriber, type[models.Model]]], execute: Callable[..., Any],
    sql: str, params: Any, context: dict[str, Any], using: str,
) -> Any:
    """``DELETE FROM t WHERE c``: the rows' own values, from ``RETURNING`` or a locked ``SELECT`` first."""
    model = _concrete(depends[0][1])
    parsed = _DELETE.match(sql)
    precise = (
        parsed is not None
        and _unquote(parsed.group(1)) == table
        and model._meta.db_table.lower() == table
        and not model._meta.get_parent_list()
        and not _NOT_A_PLAIN_WHERE.search(parsed.group(2))
    )
    if not precise or parsed is None:
        result = execute(sql, params, False, context)
        for subscriber, each in depends:
            subscriber.table_written(each, "DELETE", sql, using)
        return result
    if _returns_its_rows(model, parsed.group(2), params, using):
        result = execute(f"{sql} RETURNING *", params, False, context)
        rows = _returned(model, context["cursor"], using)
    else:
        rows, result = _select_then_delete(model, parsed.group(1), parsed.group(2), execute, sql, params, context, using)
    for subscriber, each in depends:
        if len(rows) > PRECISE_ROWS:
            subscriber.table_written(each, "DELETE", sql, using)
        else:
            for row in rows:
                subscriber.row_changed(model, row, None, using)
    return result


def _returns_its_rows(model: type[models.Model], where: str, params: Any, using: str) -> bool:
    """Whether the DELETE can hand back its own rows: PostgreSQL, by primary key values, few enough.

    ``RETURNING *`` costs no extra query (the budget is one per write), needs no
    lock (the delete holds it) and is bounded by the statement's own values, so
    a large ``WHERE`` never ships every deleted row back.
    """
    if connections[using].vendor != "postgresql":
        return False
    match = _BY_VALUES.match(where)
    return (
        match is not None
        and _unquote(match.group(1)) == model._meta.pk.column.lower()
        and len(params or ()) <= PRECISE_ROWS
    )


def _returned(model: type[models.Model], cursor: Any, using: str) -> list[models.Model]:
    """The rows of ``RETURNING *`` as instances, each field through its ``from_db_value`` as a query would."""
    connection = connections[using]
    concrete = model._meta.concrete_fields
    position = {column.name: index for index, column in enumerate(cursor.description)}
    order = [position[f.column] for f in concrete]  # from_db takes values in concrete-field order
    names = [f.attname for f in concrete]
    rows = []
    for values in cursor.fetchall():
        converted = [_from_db(f, values[index], connection) for f, index in zip(concrete, order, strict=True)]
        rows.append(model.from_db(using, names, converted))
    return rows


def _from_db(field: models.Field, value: Any, connection: Any) -> Any:
    if value is None or not hasattr(field, "from_db_value"):
        return value
    return field.from_db_value(value, None, connection)


def _select_then_delete(
    model: type[models.Model], table: str, where: str, execute: Callable[..., Any],
    sql: str, params: Any, context: dict[str, Any], using: str,
) -> tuple[list[models.Model], Any]:
    """Elsewhere: ``SELECT * ... WHERE`` (locked where the database can) in the delete's transaction, then the DELETE."""
    connection = connections[using]
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    with transaction.atomic(using=using, savepoint=False):
        select = f"SELECT * FROM {table} WHERE {where}{lock}"
        rows = list(model._base_manager.db_manager(using).raw(select, params)[: PRECISE_ROWS + 1])
        result = execute(sql, params, False, context)
    return rows, result


# -- installing ---------------------------------------------------------------------------------


def install(connection: Any) -> None:
    """Put the wrapper on a connection (once: ``execute_wrappers`` lives as long as the wrapper object)."""
    if capture not in connection.execute_wrappers:
        connection.execute_wrappers.insert(0, capture)


def _created(sender: Any, connection: Any, **kwargs: Any) -> None:
    install(connection)


def enable() -> None:
    """Capture on every connection: those that exist now and every one created later (called at ``ready()``)."""
    connection_created.connect(_created, weak=False, dispatch_uid="velro_cache.capture")
    for connection in connections.all(initialized_only=True):
        install(connection)
    signals.pre_save.connect(_saving, weak=False, dispatch_uid="velro_cache.capture.pre_save")
    signals.post_save.connect(_saved, weak=False, dispatch_uid="velro_cache.capture.post_save")
    signals.m2m_changed.connect(_m2m_changing, weak=False, dispatch_uid="velro_cache.capture.m2m_changed")


def disable() -> None:
    """Undo ``enable`` (for the write-overhead benchmark and tests; projects set ``CAPTURE_WRITES = False``)."""
    connection_created.disconnect(dispatch_uid="velro_cache.capture")
    for connection in connections.all(initialized_only=True):
        while capture in connection.execute_wrappers:
            connection.execute_wrappers.remove(capture)
    signals.pre_save.disconnect(dispatch_uid="velro_cache.capture.pre_save")
    signals.post_save.disconnect(dispatch_uid="velro_cache.capture.post_save")
    signals.m2m_changed.disconnect(dispatch_uid="velro_cache.capture.m2m_changed")
