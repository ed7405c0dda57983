"""Writes made outside Django (psql, another service): a CaptureWrites trigger NOTIFYs, the listener retires.

The external writer is a DB-API connection of its own, which Django's write
capture never sees; without the trigger the cached value stays stale.
"""

from __future__ import annotations

import pytest
from django.db import connection
from model_bakery import baker
from studio.models import Generation

from tests.support import eventually
from velro_cache.db import notify
from velro_cache.db.operations import CaptureWrites

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif("connection.vendor != 'postgresql'", reason="PostgreSQL NOTIFY"),
]


def external(sql: str, params: list) -> None:
    raw = connection.get_new_connection(connection.get_connection_params())
    try:
        raw.cursor().execute(sql, params)
        raw.commit()
    finally:
        raw.close()


def _operation(forwards: bool) -> None:
    operation = CaptureWrites("studio_generation")
    with connection.schema_editor() as editor:
        if forwards:
            operation.database_forwards("studio", editor, None, None)
        else:
            operation.database_backwards("studio", editor, None, None)


@pytest.fixture
def listening(own_cache):
    _operation(True)
    notify.enable()
    connection.close()  # the next connection is marked by connection_created
    assert notify.listener.listening.wait(10)
    yield notify.listener
    notify.listener.stop()
    _operation(False)


def test_a_write_made_outside_django_is_retired_through_the_trigger(listening):
    from studio.reads import generation_meta

    generation = baker.make(Generation, prompt="first")
    assert generation_meta(generation.pk)["prompt"] == "first"
    external("UPDATE studio_generation SET prompt = %s WHERE id = %s", ["from psql", generation.pk])
    assert eventually(lambda: generation_meta(generation.pk)["prompt"] == "from psql", 5)


def test_without_the_trigger_an_outside_write_stays_stale(own_cache):
    from studio.reads import generation_meta

    generation = baker.make(Generation, prompt="first")
    assert generation_meta(generation.pk)["prompt"] == "first"
    external("UPDATE studio_generation SET prompt = %s WHERE id = %s", ["from psql", generation.pk])
    assert generation_meta(generation.pk)["prompt"] == "first"


def test_djangos_own_writes_are_not_announced(listening):
    """Django's sessions set velro_cache.captured: the trigger skips them (they are captured precisely already)."""
    heard = listening.heard
    baker.make(Generation, prompt="django")  # skipped by the trigger
    external("UPDATE studio_generation SET prompt = prompt WHERE id = -1", [])  # announced: the sentinel
    assert eventually(lambda: listening.heard > heard, 5)
    assert listening.heard == heard + 1  # notifications arrive in commit order: Django's would have come first


def test_a_write_made_while_the_listener_reconnects_is_retired_once_it_is_back(listening):
    """PostgreSQL keeps no NOTIFY for a session that is gone: a write in the gap is caught by the reconnect.

    The listener's backend is terminated for real (``pg_terminate_backend``),
    the external write commits while it is away, and once it LISTENs again
    the value must not stay stale.
    """
    from studio.reads import generation_meta

    generation = baker.make(Generation, prompt="first")
    assert generation_meta(generation.pk)["prompt"] == "first"
    external(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE %s AND pid <> pg_backend_pid()",
        [f"LISTEN {notify.CHANNEL}%"],
    )
    assert eventually(lambda: not listening.listening.is_set(), 5)
    external("UPDATE studio_generation SET prompt = %s WHERE id = %s", ["while away", generation.pk])
    assert listening.listening.wait(10)
    assert eventually(lambda: generation_meta(generation.pk)["prompt"] == "while away", 5)


def test_the_operation_is_reversible_and_deconstructs():
    operation = CaptureWrites("studio_generation")
    assert operation.deconstruct() == ("CaptureWrites", ["studio_generation"], {})
    _operation(True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_trigger WHERE tgname = %s", [notify.trigger_name("studio_generation")])
        assert cursor.fetchone()[0] == 1
    _operation(False)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_trigger WHERE tgname = %s", [notify.trigger_name("studio_generation")])
        assert cursor.fetchone()[0] == 0
