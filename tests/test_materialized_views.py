"""Materialized views (L3): migrations, refresh, locks, debounced refresh, the refresh log.

The same tests run on PostgreSQL (the suite's database) and on SQLite against
the emulation: ``make test-sqlite`` (which ``make test`` runs after the main
suite) runs this module again with ``--ds tests.settings_sqlite``. Where a
check is PostgreSQL specific (pg_matviews, advisory locks) the SQLite leg
asserts the emulation's equivalent instead; each of those tests is collected
only in its own leg, so neither leg reports the other's as skipped. Races are
shown by holding a lock or a transaction open at the exact point, never by
timing.
"""

from __future__ import annotations

import ast
import io
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import TypeVar

import pytest
from django.contrib.auth.models import User
from django.core.cache.backends.locmem import LocMemCache
from django.core.management import CommandError, call_command
from django.db import OperationalError, connection, connections, transaction
from django.db.migrations.writer import MigrationWriter
from django.test import override_settings
from django.test.utils import isolate_apps
from django.utils import timezone
from model_bakery import baker
from studio import materialized
from studio.models import (
    ActiveMembership,
    ActiveUser,
    Generation,
    GenerationAccess,
    GenerationAccessCount,
    RecentGeneration,
    Team,
    TeamMembership,
)

from velro_cache.checks import check_view_settings, materialized_view_model_problems
from velro_cache.db import refresh as view_refresh
from velro_cache.db import refreshlog, schedule, writes
from velro_cache.db import sql as view_sql
from velro_cache.db.reads import read_view, view_key, view_ttl
from velro_cache.db.models import MaterializedView
from velro_cache.db.operations import (
    CreateMaterializedView,
    DropMaterializedView,
    RefreshMaterializedView,
)
from velro_cache.db.refresh import refresh_view
from velro_cache.db.registry import registry, views_fed_by
from velro_cache.db.schedule import wait_for_background_refreshes
from velro_cache.exceptions import ReadOnlyViewError, RefreshFailed, UnsupportedDatabase
from velro_cache.management.commands import velro_refresh_views
from velro_cache.models import ViewRefresh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IS_PG = connection.vendor == "postgresql"
Test = TypeVar("Test", bound=Callable[..., object])


def collected_on(vendor: str) -> Callable[[Test], Test]:
    """Collect the test only in the leg whose database is ``vendor``.

    Such a test is not skipped in the other leg, it is not there at all
    (``__test__ = False`` keeps pytest from collecting it): a skip in every
    run of a leg would only hide a test that the other leg runs.
    """

    def collect_if_this_leg(test: Test) -> Test:
        test.__test__ = connection.vendor == vendor  # type: ignore[attr-defined]
        return test

    return collect_if_this_leg


pg_only = collected_on("postgresql")  # the SQLite leg asserts the emulation's equivalent instead
sqlite_only = collected_on("sqlite")

VIEWS = {
    "studio_active_users_24h": ("user_id", [("activity", "user_id")]),
    "studio_recent_generations_48h": ("id", [("created_at", "id"), ("owner_id", "created_at")]),
    "studio_active_memberships": ("id", [("user_id",), ("team_id",)]),
    "studio_generation_access_counts": ("generation_id", [("access_count", "generation_id")]),
}
WAIT = 60  # seconds: an upper bound for background work, never a measured duration


@pytest.fixture(autouse=True)
def quiet_refresh_worker() -> Iterator[None]:
    """Each test starts and ends with the refresh worker idle, and refresh-on-write
    is off unless the test turns it on (its own override_settings wins), so no
    background refresh lands in the middle of a test that does not expect one."""
    schedule.debouncer.run_now()
    assert wait_for_background_refreshes(WAIT)
    with override_settings(VELRO_CACHE={"VIEW_REFRESH_ON_WRITE": False}):
        yield
    schedule.debouncer.run_now()
    assert wait_for_background_refreshes(WAIT)


# -- looking into the database ------------------------------------------------------


def views_in_database() -> set[str]:
    with connection.cursor() as cursor:
        if IS_PG:
            cursor.execute("SELECT matviewname FROM pg_matviews WHERE schemaname = current_schema()")
            return {row[0] for row in cursor.fetchall()}
        # The emulation: a table plus the view that keeps its SELECT.
        cursor.execute("SELECT name FROM sqlite_master WHERE type = 'view' AND name LIKE '%\\_\\_source' ESCAPE '\\'")
        sources = {row[0][: -len(view_sql.SOURCE_SUFFIX)] for row in cursor.fetchall()}
        cursor.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return sources & {row[0] for row in cursor.fetchall()}


def indexes_of(view: str) -> dict[tuple[str, ...], bool]:
    """Index columns (in order) -> unique, read back from the database's catalog."""
    found = {}
    with connection.cursor() as cursor:
        if IS_PG:
            cursor.execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s", [view])
            for (definition,) in cursor.fetchall():
                columns = re.search(r"\((.*)\)", definition).group(1)
                names = tuple(part.split()[0].strip('"') for part in columns.split(","))
                found[names] = definition.startswith("CREATE UNIQUE INDEX")
            return found
        cursor.execute(f"PRAGMA index_list({connection.ops.quote_name(view)})")
        for _, name, unique, _, _ in cursor.fetchall():
            cursor.execute(f"PRAGMA index_info({connection.ops.quote_name(name)})")
            found[tuple(row[2] for row in cursor.fetchall())] = bool(unique)
    return found


def count_rows(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM {connection.ops.quote_name(table)}")
        return cursor.fetchone()[0]


def refresh_log(view: str) -> list[ViewRefresh]:
    return list(ViewRefresh.objects.filter(view=view).order_by("started_at"))


def make_generations(n: int, hours_ago: float = 1.0, **fields) -> list[Generation]:
    owner = fields.pop("owner", None) or baker.make(User, is_active=True)
    created = timezone.now() - timedelta(hours=hours_ago)
    return [baker.make(Generation, owner=owner, created_at=created, **fields) for _ in range(n)]


class OtherVendorEditor:
    """A schema editor of a database that has no materialized views (we have no MySQL to run)."""

    def __init__(self) -> None:
        self.connection = SimpleNamespace(vendor="mysql", alias="default")
        self.collect_sql = False

    def quote_name(self, name: str) -> str:
        return f"`{name}`"

    def execute(self, sql: str, params=None) -> None:  # pragma: no cover - must never be reached
        raise AssertionError(f"executed on an unsupported database: {sql}")


def run_operation(operation, backwards: bool = False) -> None:
    with connection.schema_editor() as editor:
        if backwards:
            operation.database_backwards("studio", editor, None, None)
        else:
            operation.database_forwards("studio", editor, None, None)


# -- migrations -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_migrate_forward_created_the_views_with_their_indexes():
    assert set(VIEWS) <= views_in_database()
    for view, (unique, others) in VIEWS.items():
        indexes = indexes_of(view)
        assert indexes.get((unique,)) is True, (view, indexes)
        for columns in others:
            assert indexes.get(columns) is False, (view, columns, indexes)
        assert view_sql.has_unique_index(connection, view)


@pytest.mark.django_db(transaction=True)
def test_migrate_backward_drops_the_views_and_forward_recreates_them():
    try:
        call_command("migrate", "studio", "0001", verbosity=0)
        assert not set(VIEWS) & views_in_database()
        for view in VIEWS:
            assert indexes_of(view) == {}
            assert not view_sql.view_exists(connection, view)
        assert "studio_generationaccess" not in connection.introspection.table_names()
    finally:
        call_command("migrate", "studio", verbosity=0)
    assert set(VIEWS) <= views_in_database()
    assert all(view_sql.has_unique_index(connection, view) for view in VIEWS)


def test_operations_deconstruct_and_serialize_into_migration_files():
    create = CreateMaterializedView(
        "v_demo", {"postgresql": "SELECT 1 AS id", "sqlite": "SELECT 1 AS id"},
        unique_index="id", indexes=[["-id"]], with_data=False,
    )
    name, args, kwargs = create.deconstruct()
    assert name == "CreateMaterializedView" and args == []
    assert kwargs == {
        "name": "v_demo", "sql": {"postgresql": "SELECT 1 AS id", "sqlite": "SELECT 1 AS id"},
        "unique_index": ["id"], "indexes": [["-id"]], "with_data": False,
    }
    assert CreateMaterializedView(**kwargs).deconstruct() == (name, args, kwargs)
    for operation in (create, DropMaterializedView("v_demo"), RefreshMaterializedView("v_demo", concurrently=False)):
        text, imports = MigrationWriter.serialize(operation)
        assert "import velro_cache.db.operations" in imports
        assert text.startswith(f"velro_cache.db.operations.{type(operation).__name__}(")
    assert create.reversible and RefreshMaterializedView("v_demo").reversible
    assert not DropMaterializedView("v_demo").reversible
    assert DropMaterializedView(**kwargs).reversible


@pytest.mark.django_db(transaction=True)  # SQLite's schema editor refuses to run inside a test transaction
def test_makemigrations_sees_no_change_and_sqlmigrate_prints_the_view_sql():
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)  # SystemExit(1) on changes
    out = io.StringIO()
    call_command("sqlmigrate", "studio", "0002", stdout=out)
    if IS_PG:
        assert 'CREATE MATERIALIZED VIEW "studio_recent_generations_48h"' in out.getvalue()
    else:
        assert 'CREATE VIEW "studio_recent_generations_48h__source"' in out.getvalue()
    assert 'CREATE UNIQUE INDEX "studio_recent_generations_48h_id_uniq"' in out.getvalue()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"unique_index": ["lower(name)"]}, "not a column name"),
        ({"indexes": [["id", "id > 3"]]}, "not a column name"),
        ({"sql": {"mysql": "SELECT 1"}}, "unsupported vendors"),
        ({"name": "bad name"}, "not a valid materialized view name"),
    ],
)
def test_bad_definitions_fail_when_the_migration_is_loaded(kwargs, message):
    arguments = {"name": "v_demo", "sql": "SELECT 1 AS id", **kwargs}
    with pytest.raises(ValueError, match=message):
        CreateMaterializedView(**arguments)


def test_other_databases_get_a_clear_error_at_migrate_time():
    editor = OtherVendorEditor()
    for operation in (
        CreateMaterializedView("v_demo", "SELECT 1 AS id", unique_index="id"),
        DropMaterializedView("v_demo"),
        RefreshMaterializedView("v_demo", concurrently=True),
    ):
        with pytest.raises(UnsupportedDatabase, match="PostgreSQL .* SQLite .* not on 'mysql'"):
            operation.database_forwards("studio", editor, None, None)


@pytest.mark.django_db(transaction=True)
def test_drop_without_the_definition_is_irreversible_with_it_reversible():
    create = CreateMaterializedView("velro_test_teams", "SELECT id, slug FROM studio_team", unique_index="id")
    run_operation(create)
    try:
        with pytest.raises(Exception, match="cannot be reversed"):
            run_operation(DropMaterializedView("velro_test_teams"), backwards=True)
        drop = DropMaterializedView(**create.deconstruct()[2])
        run_operation(drop)
        assert not view_sql.view_exists(connection, "velro_test_teams")
        run_operation(drop, backwards=True)
        assert view_sql.view_exists(connection, "velro_test_teams")
        assert view_sql.has_unique_index(connection, "velro_test_teams")
    finally:
        run_operation(create, backwards=True)
    assert not view_sql.view_exists(connection, "velro_test_teams")


@pytest.mark.django_db(transaction=True)
def test_refresh_operation_picks_concurrently_only_when_the_view_allows_it():
    baker.make(Team, _quantity=3)
    create = CreateMaterializedView("velro_test_teams", "SELECT id, slug FROM studio_team", unique_index="id", with_data=False)
    run_operation(create)
    try:
        if IS_PG:
            assert not view_sql.is_populated(connection, "velro_test_teams")
        run_operation(RefreshMaterializedView("velro_test_teams"))  # unpopulated: must go plain
        assert count_rows("velro_test_teams") == 3
        baker.make(Team)
        run_operation(RefreshMaterializedView("velro_test_teams"))  # populated + unique: concurrently
        assert count_rows("velro_test_teams") == 4
        run_operation(RefreshMaterializedView("velro_test_teams"), backwards=True)  # a no-op
    finally:
        run_operation(create, backwards=True)


# -- refreshing -------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_refresh_keeps_serving_the_old_rows_to_readers_until_it_commits():
    make_generations(3)
    RecentGeneration.refresh()
    make_generations(2)
    refreshed, release, outcome = threading.Event(), threading.Event(), {}

    def refresh_and_hold() -> None:
        try:
            with transaction.atomic():
                outcome["result"] = RecentGeneration.refresh()
                refreshed.set()
                release.wait(WAIT)  # the refresh is done but not committed: its locks are held
        finally:
            connections.close_all()

    refresher = threading.Thread(target=refresh_and_hold)
    refresher.start()
    try:
        assert refreshed.wait(WAIT)
        # A plain REFRESH would hold an ACCESS EXCLUSIVE lock here and this read would wait.
        with transaction.atomic():
            if IS_PG:
                with connection.cursor() as cursor:
                    cursor.execute("SET LOCAL lock_timeout = '10s'")
            assert RecentGeneration.objects.count() == 3
    finally:
        release.set()
        refresher.join(WAIT)
    assert outcome["result"].concurrently
    assert RecentGeneration.objects.count() == 5


@pg_only
@pytest.mark.django_db(transaction=True)
def test_plain_refresh_locks_readers_out_which_is_why_concurrently_is_the_default():
    make_generations(2)
    held, release, errors = threading.Event(), threading.Event(), []

    def refresh_plainly_and_hold() -> None:
        try:
            with transaction.atomic():
                result = RecentGeneration.refresh(concurrently=False)
                assert not result.concurrently and result.note == "plain refresh requested"
                held.set()
                release.wait(WAIT)
        except Exception as exc:  # noqa: BLE001 - reported to the test thread
            errors.append(exc)
        finally:
            connections.close_all()

    refresher = threading.Thread(target=refresh_plainly_and_hold)
    refresher.start()
    try:
        assert held.wait(WAIT)
        with pytest.raises(OperationalError, match="lock timeout"), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '200ms'")
            RecentGeneration.objects.count()
    finally:
        release.set()
        refresher.join(WAIT)
    assert not errors


@pytest.mark.django_db(transaction=True)
def test_a_view_without_a_unique_index_refreshes_plainly_and_says_why():
    baker.make(Team, _quantity=2)
    create = CreateMaterializedView("velro_test_no_key", "SELECT name FROM studio_team")
    run_operation(create)
    try:
        result = refresh_view("velro_test_no_key", concurrently=True)
        assert result.ok and not result.concurrently and result.rows == 2
        assert "no unique index" in result.note and "CONCURRENTLY" in result.note
        record = ViewRefresh.objects.get(pk=result.record_id)
        assert (record.concurrently, record.rows, record.error) == (False, 2, "")
        assert "no unique index" in record.note
    finally:
        run_operation(create, backwards=True)


@pytest.mark.django_db(transaction=True)
def test_every_refresh_is_recorded_with_when_how_long_and_rows():
    make_generations(4)
    before = timezone.now()
    result = RecentGeneration.refresh()
    record = ViewRefresh.objects.get(pk=result.record_id)
    assert record.view == "studio_recent_generations_48h" and record.database == "default"
    assert record.trigger == "manual" and record.rows == 4 and record.error == ""
    assert before <= record.started_at <= record.finished_at and record.duration_ms >= 0
    assert refreshlog.last_refresh(RecentGeneration).pk == record.pk
    assert refreshlog.staleness(RecentGeneration) >= timedelta(0)


@pytest.mark.django_db(transaction=True)
def test_a_failed_refresh_is_recorded_with_its_error_and_keeps_the_old_rows():
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE velro_test_source (k integer, v integer)")
        cursor.execute("INSERT INTO velro_test_source VALUES (1, 1), (2, 2)")
    create = CreateMaterializedView("velro_test_keyed", "SELECT k, v FROM velro_test_source", unique_index="k")
    run_operation(create)
    try:
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO velro_test_source VALUES (1, 3)")  # k is no longer unique
        with pytest.raises(RefreshFailed) as failed:
            refresh_view("velro_test_keyed")
        assert failed.value.result.error
        [record] = refresh_log("velro_test_keyed")
        assert record.error == failed.value.result.error and record.rows is None
        assert not record.succeeded and refreshlog.last_refresh("velro_test_keyed") is None
        assert count_rows("velro_test_keyed") == 2
    finally:
        run_operation(create, backwards=True)
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE velro_test_source")


@pytest.mark.django_db(transaction=True)
def test_refreshing_a_view_that_does_not_exist_fails_clearly_and_is_recorded():
    with pytest.raises(RefreshFailed, match="does not exist"):
        refresh_view("velro_no_such_view")
    [record] = refresh_log("velro_no_such_view")
    assert "does not exist" in record.error


@pytest.mark.django_db(transaction=True)
def test_a_second_refresh_in_the_same_process_waits_or_skips():
    view = "studio_recent_generations_48h"
    lock = view_refresh._process_locks.get("default", view)
    with lock:  # what a running refresh holds
        skipped = refresh_view(view, wait=False)
        assert skipped.skipped and "in this process" in skipped.note
        assert not refresh_log(view)
        waiter = threading.Thread(target=lambda: (refresh_view(view), connections.close_all()))
        waiter.start()
        waiter.join(0.2)
        assert waiter.is_alive() and not refresh_log(view)  # queued behind the holder
    waiter.join(WAIT)
    assert len(refresh_log(view)) == 1


def _psycopg_session():
    import psycopg

    settings = connection.settings_dict
    return psycopg.connect(
        dbname=settings["NAME"], user=settings["USER"], host=settings["HOST"],
        port=settings["PORT"], password=settings.get("PASSWORD") or None, autocommit=True,
    )


def _waiting_on_advisory_lock(key: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND objid::bigint = %s AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
            [key & 0xFFFFFFFF],
        )
        return cursor.fetchone()[0]


@pg_only
@pytest.mark.django_db(transaction=True)
def test_a_refresh_in_another_process_makes_this_one_wait_or_skip():
    view = "studio_recent_generations_48h"
    key = view_refresh.advisory_lock_key(view)
    other = _psycopg_session()  # another process's connection, holding the refresh lock
    try:
        other.execute("SELECT pg_advisory_lock(%s)", [key])
        skipped = refresh_view(view, wait=False)
        assert skipped.skipped and "another process" in skipped.note
        done = threading.Event()
        waiter = threading.Thread(target=lambda: (refresh_view(view), connections.close_all(), done.set()))
        waiter.start()
        deadline = timezone.now() + timedelta(seconds=WAIT)
        while not _waiting_on_advisory_lock(key):  # the waiter is blocked inside PostgreSQL
            assert timezone.now() < deadline and waiter.is_alive()
            threading.Event().wait(0.01)
        assert not done.is_set() and not refresh_log(view)
        other.execute("SELECT pg_advisory_unlock(%s)", [key])
        waiter.join(WAIT)
        assert done.is_set() and len(refresh_log(view)) == 1
    finally:
        other.close()


@sqlite_only
@pytest.mark.django_db(transaction=True)
def test_sqlite_emulation_a_writer_in_another_process_makes_the_refresh_wait():
    import sqlite3

    view = "studio_recent_generations_48h"
    other = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holding SQLite's write lock
        done = threading.Event()
        waiter = threading.Thread(target=lambda: (refresh_view(view), connections.close_all(), done.set()))
        waiter.start()
        waiter.join(0.2)
        assert waiter.is_alive() and not done.is_set()
        other.execute("COMMIT")
        waiter.join(WAIT)
        assert done.is_set() and len(refresh_log(view)) == 1
    finally:
        other.close()


# -- refreshing after writes ----------------------------------------------------------------------


WRITE_KEY = ("write", "default", "studio_recent_generations_48h")


@pytest.mark.django_db(transaction=True)
@override_settings(VELRO_CACHE={"VIEW_REFRESH_DEBOUNCE": 3600})
def test_a_burst_of_committed_writes_is_refreshed_once_after_commit_off_the_request_path():
    owner = baker.make(User, is_active=True)
    schedule.debouncer.run_now()
    assert wait_for_background_refreshes(WAIT)
    ViewRefresh.objects.all().delete()
    for _ in range(20):  # twenty transactions, each committing one write
        make_generations(1, owner=owner)
    assert WRITE_KEY in schedule.debouncer.pending()  # scheduled, not run by the writer
    assert not refresh_log("studio_recent_generations_48h")
    schedule.debouncer.run_now()  # the debounce window ends
    assert wait_for_background_refreshes(WAIT)
    [record] = refresh_log("studio_recent_generations_48h")
    assert record.trigger == "write" and record.rows == 20 and record.concurrently
    assert RecentGeneration.objects.count() == 20
    # Generation is a source of the active-users view too: also refreshed once.
    assert len(refresh_log("studio_active_users_24h")) == 1


@pytest.mark.django_db(transaction=True)
@override_settings(VELRO_CACHE={"VIEW_REFRESH_DEBOUNCE": 3600})
def test_a_rolled_back_transaction_refreshes_nothing():
    owner = baker.make(User, is_active=True)
    schedule.debouncer.run_now()
    assert wait_for_background_refreshes(WAIT)
    ViewRefresh.objects.all().delete()
    with pytest.raises(RuntimeError), transaction.atomic():
        make_generations(5, owner=owner)
        raise RuntimeError("roll back")
    assert not schedule.debouncer.pending()
    schedule.debouncer.run_now()
    assert wait_for_background_refreshes(WAIT)
    assert not ViewRefresh.objects.exists()


@pytest.mark.django_db(transaction=True)
@override_settings(VELRO_CACHE={"VIEW_REFRESH_DEBOUNCE": 3600})
def test_writes_in_one_transaction_schedule_only_when_it_commits():
    with transaction.atomic():
        make_generations(3)
        assert WRITE_KEY not in schedule.debouncer.pending()
    assert WRITE_KEY in schedule.debouncer.pending()


@pytest.mark.django_db(transaction=True)
@override_settings(VELRO_CACHE={"VIEW_REFRESH_DEBOUNCE": 0.05})
def test_the_background_worker_refreshes_by_itself_when_the_window_ends():
    baker.make(TeamMembership, user=baker.make(User, is_active=True), _quantity=2)
    assert wait_for_background_refreshes(WAIT)
    records = refresh_log("studio_active_memberships")
    assert records and records[-1].trigger == "write" and records[-1].rows == 2


@pytest.mark.django_db(transaction=True)
@override_settings(VELRO_CACHE={"VIEW_REFRESH_DEBOUNCE": 3600})
def test_bulk_writes_refresh_the_views_they_feed_through_refresh_after_write():
    owner = baker.make(User, is_active=True)
    schedule.debouncer.run_now()
    assert wait_for_background_refreshes(WAIT)
    with transaction.atomic():
        Generation.objects.bulk_create([Generation(owner=owner, prompt="bulk") for _ in range(3)])
        assert not schedule.debouncer.pending()  # bulk_create sends no signal
        writes.refresh_after_write(Generation)
        assert not schedule.debouncer.pending()  # and nothing before the commit
    assert schedule.debouncer.pending() == {
        ("write", "default", "studio_recent_generations_48h"), ("write", "default", "studio_active_users_24h")
    }
    assert {spec.name for spec in views_fed_by(TeamMembership)} == {"studio_active_memberships"}


@pytest.mark.django_db(transaction=True)
@override_settings(VELRO_CACHE={"VIEW_REFRESH_DEBOUNCE": 3600})
@isolate_apps("studio")
def test_a_write_through_a_proxy_of_a_source_refreshes_its_views():
    class ProxyGeneration(Generation):
        class Meta:
            app_label = "studio"
            proxy = True

    owner = baker.make(User, is_active=True)
    schedule.debouncer.run_now()
    assert wait_for_background_refreshes(WAIT)
    ProxyGeneration.objects.create(owner=owner, prompt="through a proxy")  # post_save's sender is the proxy
    assert WRITE_KEY in schedule.debouncer.pending()


@pytest.mark.django_db(transaction=True)
@override_settings(VELRO_CACHE={"VIEW_REFRESH_ON_WRITE": False})
def test_refresh_on_write_can_be_switched_off():
    make_generations(2)
    assert WRITE_KEY not in schedule.debouncer.pending()


@pytest.mark.django_db
def test_the_schedule_refreshes_stale_views_only():
    first = view_refresh.refresh_stale_views()
    assert {r.view for r in first if r.ok} == set(VIEWS)
    second = view_refresh.refresh_stale_views()
    assert all(r.skipped and "refreshed" in r.note for r in second)
    assert schedule.schedule_tick() == 30.0  # half the shortest period (recent generations: 60 s)


# -- the model base ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_writes_to_a_materialized_view_model_raise_a_clear_error():
    make_generations(1)
    RecentGeneration.refresh()
    row = RecentGeneration.objects.get()
    attempts = {
        "save": row.save,
        "delete": row.delete,
        "create": lambda: RecentGeneration.objects.create(id=99, prompt="x"),
        "update": lambda: RecentGeneration.objects.update(prompt="x"),
        "queryset delete": lambda: RecentGeneration.objects.all().delete(),
        "bulk_create": lambda: RecentGeneration.objects.bulk_create([RecentGeneration(id=98)]),
        "bulk_update": lambda: RecentGeneration.objects.bulk_update([row], ["prompt"]),
        "get_or_create": lambda: RecentGeneration.objects.get_or_create(id=97),
        "update_or_create": lambda: RecentGeneration.objects.update_or_create(id=row.id, defaults={"prompt": "x"}),
    }
    for attempt in attempts.values():
        with pytest.raises(ReadOnlyViewError, match="read-only .* refresh it"):
            attempt()
    assert RecentGeneration.objects.get().prompt == row.prompt


@pytest.mark.django_db
def test_deleting_a_source_row_never_touches_the_view_models():
    user = baker.make(User, is_active=True)
    make_generations(1, owner=user)
    ActiveUser.refresh()
    user.delete()  # DO_NOTHING relations: the collector must not try to delete view rows
    assert not User.objects.filter(pk=user.pk).exists()


@isolate_apps("studio")
def test_materialized_view_models_are_unmanaged_even_with_their_own_meta():
    class SomeView(MaterializedView):
        class Meta:
            app_label = "studio"
            db_table = "some_view"

    assert SomeView._meta.managed is False
    assert SomeView.view_name() == "some_view"


# -- cached reads (L3 read-through) -----------------------------------------------------------------


@pytest.mark.django_db
def test_cached_view_reads_load_once_and_live_one_refresh_period(make_cache):
    make_generations(2)
    RecentGeneration.refresh()
    loads = []

    def loader() -> list[int]:
        loads.append(1)
        return list(RecentGeneration.objects.values_list("id", flat=True))

    tiered = make_cache(l2=False)
    first = read_view(RecentGeneration, "ids", loader, cache=tiered)
    make_generations(1)
    RecentGeneration.refresh()
    assert read_view(RecentGeneration, "ids", loader, cache=tiered) == first and len(loads) == 1
    assert view_ttl(RecentGeneration) == 60.0 and view_key(RecentGeneration, "ids") == "view:studio_recent_generations_48h:ids"

    plain = LocMemCache("velro-views-test", {})  # no get_or_load: the fallback path
    read_view(RecentGeneration, "ids", loader, cache=plain)
    read_view(RecentGeneration, "ids", loader, cache=plain)
    assert len(loads) == 2
    stored = plain.make_key(view_key(RecentGeneration, "ids")) + ":@"  # stamped with its namespace tokens
    [expires_at] = [at for key, at in plain._expire_info.items() if key.startswith(stored)]
    expires_in = expires_at - timezone.now().timestamp()
    assert 0 < expires_in <= 60


@pytest.mark.django_db
def test_the_example_views_compute_their_windows_and_joins_on_this_database(make_cache):
    active, idle, inactive = baker.make(User, is_active=True, _quantity=2) + [baker.make(User, is_active=False)]
    team = baker.make(Team, name="Studio A", slug="studio-a")
    for user, role in ((active, "owner"), (idle, "viewer"), (inactive, "editor")):
        baker.make(TeamMembership, team=team, user=user, role=role)
    recent = make_generations(3, hours_ago=2, owner=active)
    day_old = make_generations(1, hours_ago=30, owner=idle)
    make_generations(1, hours_ago=72, owner=idle)
    make_generations(2, hours_ago=1, owner=inactive)
    for _ in range(4):
        baker.make(GenerationAccess, generation=day_old[0], user=active)
    baker.make(GenerationAccess, generation=day_old[0], user=idle, accessed_at=timezone.now() - timedelta(hours=40))
    for model in (ActiveUser, RecentGeneration, ActiveMembership, GenerationAccessCount):
        model.refresh()

    assert list(ActiveUser.objects.values_list("user_id", "generations_24h", "requests_24h")) == [(active.pk, 3, 4)]
    assert set(RecentGeneration.objects.values_list("id", flat=True)) == {g.pk for g in recent + day_old} | set(
        Generation.objects.filter(owner=inactive).values_list("id", flat=True)
    )
    assert set(ActiveMembership.objects.values_list("user_id", "team_slug", "role")) == {
        (active.pk, "studio-a", "owner"), (idle.pk, "studio-a", "viewer")
    }
    counts = GenerationAccessCount.objects.get()
    assert (counts.generation_id, counts.access_count, counts.accesses_24h, counts.unique_users) == (day_old[0].pk, 5, 4, 2)

    with override_settings(CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}):
        assert materialized.top_active_users(10)[0]["user_id"] == active.pk
        assert len(materialized.recent_generation_ids(500)) == 6
        assert {m["user_id"] for m in materialized.active_memberships()} == {active.pk, idle.pk}
        assert materialized.most_accessed_generations(5)[0]["access_count"] == 5


@pytest.mark.django_db
def test_with_view_reads_off_the_examples_reads_answer_from_the_live_tables(settings):
    """Rows written after the views' refresh: missing from the example's view reads, there with ``view_reads`` off.

    Before the example passed ``live=`` the switch changed nothing: every read still returned the view's snapshot.
    The live answers are then exactly what the views hold once refreshed.
    """
    old_hand = baker.make(User, is_active=True)
    team = baker.make(Team, name="Studio B", slug="studio-b")
    baker.make(TeamMembership, team=team, user=old_hand, role="owner")
    make_generations(2, hours_ago=3, owner=old_hand)
    views = (ActiveUser, RecentGeneration, ActiveMembership, GenerationAccessCount)
    for model in views:
        model.refresh()
    newcomer = baker.make(User, is_active=True)
    baker.make(TeamMembership, team=team, user=newcomer, role="editor")
    newer = make_generations(1, hours_ago=0.5, owner=newcomer)[0]
    for _ in range(3):
        baker.make(GenerationAccess, generation=newer, user=old_hand)
    reads = {
        "top_active_users": lambda: materialized.top_active_users(10),
        "recent_generation_ids": lambda: materialized.recent_generation_ids(500),
        "active_memberships": materialized.active_memberships,
        "most_accessed_generations": lambda: materialized.most_accessed_generations(5),
    }

    def shows_the_new_rows(answers):
        return (
            newcomer.pk in {row["user_id"] for row in answers["top_active_users"]},
            newer.pk in answers["recent_generation_ids"],
            newcomer.pk in {row["user_id"] for row in answers["active_memberships"]},
            newer.pk in {row["generation_id"] for row in answers["most_accessed_generations"]},
        )

    # A LocMemCache of its own: another test's entries under the same view keys (ids reused on SQLite) must not answer.
    locmem = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "view-reads-off"}
    with override_settings(CACHES={"default": locmem}):
        from django.core.cache import caches

        caches["default"].clear()
        assert shows_the_new_rows({name: read() for name, read in reads.items()}) == (False,) * 4  # the views' snapshot
        settings.VELRO_CACHE = {**settings.VELRO_CACHE, "SWITCHES": {"view_reads": False}}
        live = {name: read() for name, read in reads.items()}
        assert shows_the_new_rows(live) == (True,) * 4
        settings.VELRO_CACHE = {**settings.VELRO_CACHE, "SWITCHES": {}}
        for model in views:
            model.refresh()
        caches["default"].clear()
        assert {name: read() for name, read in reads.items()} == live  # the live query is the view's own
        caches["default"].clear()


# -- the management command --------------------------------------------------------------------


@pytest.mark.django_db
def test_refresh_views_command_prints_duration_and_rows_of_each_view():
    make_generations(3)
    out = io.StringIO()
    call_command("velro_refresh_views", stdout=out)
    lines = out.getvalue().splitlines()
    for view in VIEWS:
        assert any(re.match(rf"{view}: \d+ rows in \d+\.\d ms, concurrently", line) for line in lines), lines
    assert "studio_recent_generations_48h: 3 rows in" in out.getvalue()
    assert re.search(r"Refreshed 4 view\(s\), skipped 0, failed 0 in \d+\.\d\d s\.", lines[-1])
    assert set(ViewRefresh.objects.filter(trigger="command").values_list("view", flat=True)) == set(VIEWS)


@pytest.mark.django_db
def test_refresh_views_command_named_views_plain_and_list():
    out = io.StringIO()
    call_command("velro_refresh_views", "studio.RecentGeneration", "studio_active_memberships", "--plain", stdout=out)
    text = out.getvalue()
    assert "studio_recent_generations_48h: 0 rows in" in text and "plainly (plain refresh requested)" in text
    assert "studio_active_users_24h" not in text and "Refreshed 2 view(s)" in text
    listing = io.StringIO()
    call_command("velro_refresh_views", "--list", stdout=listing)
    assert re.search(r"studio_recent_generations_48h: 0 rows, refreshed 0:00:\d\d ago .*period 60 s", listing.getvalue())
    assert "studio_active_users_24h: never refreshed (period 300 s)" in listing.getvalue()
    with pytest.raises(CommandError, match="Unknown view 'nope'"):
        call_command("velro_refresh_views", "nope")


@pytest.mark.django_db
def test_refresh_views_command_reports_failures_and_exits_nonzero():
    with pytest.raises(CommandError, match="failed 1 .* Failed: studio_recent_generations_48h"):
        with connection.cursor() as cursor:
            cursor.execute(f"DROP {'MATERIALIZED VIEW' if IS_PG else 'TABLE'} studio_recent_generations_48h")
        call_command("velro_refresh_views", "studio_recent_generations_48h", stdout=io.StringIO(), stderr=io.StringIO())
    # The test's transaction rolls the DROP back.


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["nope"], r"Unknown view 'nope'; known views: studio_active_memberships, "),
        (["studio.Nope"], r"Unknown model 'studio.Nope'"),
        (["studio.Team"], r"studio.Team reads no materialized view"),
        (["--database", "nosuch"], r"Unknown database 'nosuch'; configured: default"),
        (["--database", "nosuch", "--list"], r"Unknown database 'nosuch'"),
    ],
)
def test_refresh_views_command_refuses_what_it_does_not_know_before_refreshing(arguments, message):
    with pytest.raises(CommandError, match=message):
        call_command("velro_refresh_views", *arguments, stdout=io.StringIO())
    assert not ViewRefresh.objects.exists()


@pytest.mark.django_db
def test_refresh_views_command_says_so_when_there_are_no_views(monkeypatch):
    monkeypatch.setattr(velro_refresh_views, "all_views", list)  # a project with no views
    for arguments in (["--list"], [], ["--stale"]):
        out = io.StringIO()
        call_command("velro_refresh_views", *arguments, stdout=out)
        assert out.getvalue().strip() == velro_refresh_views.NO_VIEWS
    assert not ViewRefresh.objects.exists()


@pytest.mark.django_db
def test_refresh_views_command_stale_refreshes_only_the_named_views():
    out = io.StringIO()
    call_command("velro_refresh_views", "studio_active_memberships", "--stale", stdout=out)
    assert "Refreshed 1 view(s), skipped 0, failed 0" in out.getvalue()
    assert list(ViewRefresh.objects.values_list("view", flat=True)) == ["studio_active_memberships"]


@pytest.mark.django_db
def test_refresh_views_command_stale_needs_a_registered_period():
    spec = registry.get("studio_active_memberships")
    registry.unregister(spec.name)
    try:
        listing = io.StringIO()
        call_command("velro_refresh_views", "--list", stdout=listing)  # still known: its model reads the view
        assert "studio_active_memberships: never refreshed (not registered)" in listing.getvalue()
        with pytest.raises(CommandError, match="--stale needs a refresh period, and studio_active_memberships"):
            call_command("velro_refresh_views", "studio_active_memberships", "--stale", stdout=io.StringIO())
    finally:
        registry.register(spec.model, refresh_on=spec.sources, period=spec.period, debounce=spec.debounce)
    assert not ViewRefresh.objects.exists()


# -- the package layout ------------------------------------------------------------------------------


def _imports_of(path: Path, package: set[str]) -> set[str]:
    """The sibling modules ``path`` imports, at module level or inside a function;
    imports under ``if TYPE_CHECKING:`` are left out (they never run)."""
    tree = ast.parse(path.read_text())
    type_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for inner in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module.split(".")[0]] if node.module else [alias.name for alias in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("velro_cache.db."):
            found.add(node.module.split(".")[2])
    return found & package


def test_the_view_package_has_no_import_cycle_not_even_through_a_function_level_import():
    """Each module imports only those listed before it in ``velro_cache.db``'s docstring,
    which is therefore both an order that has no cycle and a true map of the package."""
    import velro_cache.db

    folder = Path(ROOT, "velro_cache", "db")
    package = {path.stem for path in folder.glob("*.py")} - {"__init__"}
    documented = re.findall(r"^- ``(\w+)``:", velro_cache.db.__doc__, flags=re.MULTILINE)
    assert sorted(documented) == sorted(package)
    for position, module in enumerate(documented):
        imports = _imports_of(folder / f"{module}.py", package)
        assert imports <= set(documented[:position]), f"{module} imports {sorted(imports - set(documented[:position]))}"
    assert "refresh" in _imports_of(folder / "models.py", package)  # the one direction between the two


def test_the_app_wires_refresh_after_writes_and_the_schedule_without_being_imported_by_the_project():
    """``django.setup()`` alone connects the write receivers and the first-request hook:
    a project that only calls ``register_view`` gets both."""
    script = """
import django
from django.conf import settings
settings.configure(
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "velro_cache"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    VELRO_CACHE={"VIEW_REFRESH_SCHEDULE": True, "VIEW_REFRESH_DEBOUNCE": 3600},
)
django.setup()
from django.contrib.auth.models import User
from django.core.signals import request_started
from django.db.models.signals import post_save
from velro_cache.db.registry import register_view

register_view("some_view", refresh_on=[User])
post_save.send(sender=User, instance=None, created=True, using="default")
request_started.send(sender=None)
from velro_cache.db.schedule import debouncer  # imported only now by this script

print(sorted(debouncer.pending() | {key for key in [("schedule", "default", "")] if debouncer.is_scheduled(key)}))
"""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=WAIT, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[('schedule', 'default', ''), ('write', 'default', 'some_view')]"


# -- settings checks ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value", "check_id"),
    [
        ("VIEW_REFRESH_ON_WRITE", "yes", "velro_cache.E030"),
        ("VIEW_REFRESH_SCHEDULE", 1, "velro_cache.E030"),
        ("VIEW_REFRESH_DEBOUNCE", -1, "velro_cache.E031"),
        ("VIEW_REFRESH_PERIOD", 0, "velro_cache.E032"),
        ("VIEW_REFRESH_LOG_KEEP", 2.5, "velro_cache.E033"),
    ],
)
def test_bad_view_settings_are_reported_by_system_checks(setting, value, check_id):
    with override_settings(VELRO_CACHE={setting: value}):
        found = {message.id for message in check_view_settings()}
    assert found == {check_id}


@isolate_apps("studio")
def test_a_managed_view_model_and_a_database_without_views_are_reported():
    class ManagedView(MaterializedView):
        class Meta:
            app_label = "studio"
            db_table = "managed_view"
            managed = True

    problems = materialized_view_model_problems([ManagedView, RecentGeneration], {"default": "postgresql", "legacy": "mysql"})
    assert [(p.id, p.obj) for p in problems] == [
        ("velro_cache.E034", ManagedView), ("velro_cache.W030", ManagedView), ("velro_cache.W030", RecentGeneration)
    ]
    assert "'legacy' is mysql" in problems[-1].msg
    assert materialized_view_model_problems([RecentGeneration], {"default": "sqlite"}) == []


# -- the benchmark -------------------------------------------------------------------------------------


@pg_only  # the benchmark measures PostgreSQL's materialized views
def test_views_benchmark_quick_run_writes_a_well_formed_report(tmp_path):
    import json

    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.views", "--quick", "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=280, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((tmp_path / "views.json").read_text())
    assert data["benchmark"] == "views" and data["quick"] is True
    sections = {section["title"]: section for section in data["sections"]}
    queries = sections["Warming queries: view vs live tables"]["rows"]
    assert {(row["query"], row["source"]) for row in queries} == {
        (query, source) for query in ("top 100 active users (24 h)", "500 most recent generations (48 h)",
                                      "active team memberships")
        for source in ("materialized view", "live tables")
    }
    for row in queries:
        assert row["rows returned"] > 0 and row["rows scanned"] > 0 and row["median ms"] > 0
    assert "## Warming queries: view vs live tables" in (tmp_path / "views.md").read_text()
