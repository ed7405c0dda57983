"""Write capture in one process: which statements count as writes, of which tables; the cost; commits and rollbacks."""

from __future__ import annotations

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from model_bakery import baker
from studio.models import Generation, Team

from tests.support import Background
from velro_cache.invalidation import capture

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    ("sql", "tables"),
    [
        ('UPDATE "studio_generation" SET "prompt" = %s WHERE "studio_generation"."id" = %s', ["studio_generation"]),
        ("update studio_generation set prompt = 'x'", ["studio_generation"]),
        ('INSERT INTO "auth_user_groups" ("user_id", "group_id") VALUES (%s, %s)', ["auth_user_groups"]),
        ("delete from public.studio_team where id = 1", ["studio_team"]),
        ('DELETE FROM "public"."Studio_Team" WHERE 1', ["studio_team"]),
        ("TRUNCATE studio_team, studio_teammembership CASCADE", ["studio_team", "studio_teammembership"]),
        ("TRUNCATE TABLE ONLY studio_team", ["studio_team"]),
        ("WITH moved AS (UPDATE studio_generation SET team_id = NULL RETURNING id) SELECT * FROM moved", ["studio_generation"]),
        ("INSERT OR REPLACE INTO studio_team (id) VALUES (1)", ["studio_team"]),
        ("/* a comment */ UPDATE `studio_team` SET name = 'x'", ["studio_team"]),
    ],
)
def test_the_tables_a_statement_writes(sql, tables):
    assert capture.write_verb(sql) is not None
    assert capture.tables_written(sql) == tables


@pytest.mark.parametrize(
    "sql", ["SELECT 1", "  select * from studio_generation for update", "SAVEPOINT s1", "RELEASE SAVEPOINT s1", "SET x = 1"]
)
def test_reads_and_transaction_control_are_not_writes(sql):
    assert capture.write_verb(sql) is None


def test_a_save_pays_one_extra_query_and_a_read_none(django_assert_num_queries):  # noqa: D103
    """Budget: the old row by pk, in the save's own transaction; reads are untouched."""
    generation = baker.make(Generation, prompt="a")
    with django_assert_num_queries(1):
        Generation.objects.filter(pk=generation.pk).first()
    generation.prompt = "b"
    # Autocommit: the SELECT ... FOR UPDATE and the UPDATE share one transaction
    # (BEGIN/COMMIT around them; the log lists the UPDATE last, once its wrappers returned).
    with CaptureQueriesContext(connection) as captured:
        generation.save(update_fields=["prompt"])
    sql = [query["sql"] for query in captured.captured_queries if query["sql"] not in ("BEGIN", "COMMIT")]
    assert len(sql) == 2, sql
    assert sql[0].startswith("SELECT") and sql[0].rstrip().endswith("FOR UPDATE") and sql[1].startswith("UPDATE"), sql


def _statements(write) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        write()
    return [query["sql"] for query in captured.captured_queries if query["sql"] not in ("BEGIN", "COMMIT")]


def test_a_delete_of_a_protected_object_pays_at_most_one_extra_query():
    """Budget: one extra query per write. The deleted rows come back from the DELETE itself (RETURNING).

    A generation is authorization-protected: its delete must bump its team's
    members (a pk reused later must not inherit their decisions), which is
    the one extra query; the rows' own values cost none.
    """
    team = baker.make(Team)
    off_generation, on_generation = baker.make(Generation, team=team), baker.make(Generation, team=team)
    capture.disable()
    try:
        off = _statements(off_generation.delete)
    finally:
        capture.enable()
    on = _statements(on_generation.delete)
    assert len(on) - len(off) <= 1, (off, on)
    assert not Generation.objects.filter(pk__in=[off_generation.pk, on_generation.pk]).exists()


def test_every_connection_is_captured_also_those_opened_later_in_other_threads():
    assert capture.capture in connection.execute_wrappers

    def other_thread() -> bool:
        from django.db import connection as theirs

        theirs.ensure_connection()
        try:
            return capture.capture in theirs.execute_wrappers
        finally:
            theirs.close()

    assert Background(other_thread).join()


def test_a_rolled_back_write_retires_nothing_and_a_committed_one_retires_on_commit(own_cache):
    from velro_cache import namespaces

    team = baker.make(Team)
    token = namespaces.current_tokens(own_cache, [f"team:{team.pk}", "team"])
    with pytest.raises(RuntimeError), transaction.atomic():
        Team.objects.filter(pk=team.pk).update(name="rolled back")
        raise RuntimeError
    assert namespaces.current_tokens(own_cache, [f"team:{team.pk}", "team"]) == token
    with transaction.atomic():
        Team.objects.filter(pk=team.pk).update(name="kept")
        with pytest.raises(RuntimeError), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("update studio_team set name = 'inner' where id = %s", [team.pk])
            raise RuntimeError
        assert namespaces.current_tokens(own_cache, [f"team:{team.pk}", "team"]) == token  # not before the commit
    assert namespaces.current_tokens(own_cache, ["team"]) != token[1:]


def test_a_raw_write_to_an_m2m_through_table_retires_the_model_and_add_is_left_to_m2m_changed(own_cache):
    """auth_user_groups is part of what User's declarations read: a raw INSERT retires User's data types."""
    from django.contrib.auth.models import Group, User

    from velro_cache import namespaces

    user, group = baker.make(User), baker.make(Group)
    before = namespaces.current_tokens(own_cache, ["session"])
    user.groups.add(group)  # m2m_changed retires precisely (no declared field: nothing); its INSERT is covered
    assert namespaces.current_tokens(own_cache, ["session"]) == before
    other = baker.make(Group)
    with connection.cursor() as cursor:
        cursor.execute("insert into auth_user_groups (user_id, group_id) values (%s, %s)", [user.pk, other.pk])
    assert namespaces.current_tokens(own_cache, ["session"]) != before
