"""Writes made outside Django (psql, another service): a PostgreSQL trigger NOTIFYs, a listener retires.

Write capture (``velro_cache.invalidation.capture``) sees every statement
Django sends; a statement sent by anything else is invisible to it. For the
tables a project opts in with the migration operation ``CaptureWrites``, a
statement-level trigger runs ``pg_notify('velro_cache_writes', <table>)``;
PostgreSQL delivers it when the writing transaction commits (never for a
rollback). With ``VELRO_CACHE["LISTEN_EXTERNAL_WRITES"] = True`` every
process runs a listener thread on a dedicated psycopg connection that
``LISTEN``s on that channel and retires what depends on the table (coarse, as
for any write whose rows are unknown) through the cache, hence in every
process. Every process retires the same tokens: retiring twice is harmless.

Django's own writes are already captured precisely: each Django connection
sets ``velro_cache.captured = 'on'`` when it opens, and the trigger skips
those sessions, so they do not also retire coarsely.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections

CHANNEL = "velro_cache_writes"
GUC = "velro_cache.captured"
FUNCTION = "velro_cache_notify_write"
RECONNECT_AFTER = 1.0  # seconds between attempts when the listener's connection fails

log = logging.getLogger(__name__)


def function_sql() -> str:
    """The trigger function, shared by every captured table (``CREATE OR REPLACE``: idempotent)."""
    return (
        f"CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $velro$ "
        f"BEGIN "
        f"IF coalesce(current_setting('{GUC}', true), '') = 'on' THEN RETURN NULL; END IF; "
        f"PERFORM pg_notify('{CHANNEL}', TG_TABLE_NAME); "
        f"RETURN NULL; "
        f"END $velro$"
    )


def trigger_name(table: str) -> str:
    return f"velro_cache_capture_{table}"[:63]


def create_trigger_sql(table: str, quote: Any) -> list[str]:
    """The statements that make ``table``'s writes NOTIFY (statement level: one NOTIFY per statement)."""
    return [
        function_sql(),
        f"DROP TRIGGER IF EXISTS {quote(trigger_name(table))} ON {quote(table)}",
        f"CREATE TRIGGER {quote(trigger_name(table))} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {quote(table)} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()",
    ]


def drop_trigger_sql(table: str, quote: Any) -> list[str]:
    return [f"DROP TRIGGER IF EXISTS {quote(trigger_name(table))} ON {quote(table)}"]


# -- Django's sessions: marked, so the trigger skips them ---------------------------------------


def mark_session(sender: Any, connection: Any, **kwargs: Any) -> None:
    """``connection_created``: Django's writes are captured in Python; the trigger need not announce them."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"SET {GUC} = 'on'")


# -- the listener ---------------------------------------------------------------------------------


def retire_table(table: str, using: str = DEFAULT_DB_ALIAS) -> None:
    """What an external write to ``table`` retires: everything that depends on it (rows unknown)."""
    from ..invalidation import capture

    for subscriber, model in capture.watched().get(table.lower(), ()):
        subscriber.table_written(model, "EXTERNAL", "", using)


class Listener:
    """A daemon thread with its own psycopg connection, LISTENing on ``CHANNEL``."""

    def __init__(self, using: str = DEFAULT_DB_ALIAS) -> None:
        self.using = using
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()  # set once LISTEN is in place (tests wait for it)
        self.heard = 0

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="velro-cache-listen", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.listening.clear()

    def _connect(self) -> Any:
        import psycopg

        wrapper = connections[self.using]
        params = wrapper.get_connection_params()  # read now: a test database's name is set after ready()
        params.pop("cursor_factory", None)
        params.pop("context", None)
        params.pop("prepare_threshold", None)
        conn = psycopg.connect(**params, autocommit=True)
        conn.execute(f"LISTEN {CHANNEL}")
        return conn

    def _run(self) -> None:
        reconnecting = False
        while not self._stop.is_set():
            try:
                conn = self._connect()
            except Exception:  # noqa: BLE001 - the database may be down: try again
                log.warning("velro_cache: cannot LISTEN for external writes; retrying", exc_info=True)
                self._stop.wait(RECONNECT_AFTER)
                continue
            try:
                if reconnecting:
                    self._catch_up(conn)
                self.listening.set()
                while not self._stop.is_set():
                    for notice in conn.notifies(timeout=0.5):
                        self.heard += 1
                        retire_table(notice.payload, self.using)
            except Exception:  # noqa: BLE001 - a lost connection: reconnect; a retirement error is logged
                log.warning("velro_cache: external-write listener failed; reconnecting", exc_info=True)
            finally:
                self.listening.clear()
                conn.close()
            reconnecting = True
            self._stop.wait(RECONNECT_AFTER)

    def _catch_up(self, conn: Any) -> None:
        """Back after a loss: PostgreSQL kept no NOTIFY for the session that went away, so retire every captured table.

        Run after ``LISTEN`` is in place, so a write committed from now on is
        heard and one committed while away is covered here (coarse, as for any
        write whose rows are unknown). Not on the first connect: a process that
        starts missed nothing its cache holds, and a retirement per worker
        start would empty the shared caches on every deploy.
        """
        rows = conn.execute(
            "SELECT DISTINCT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid WHERE t.tgname LIKE %s",
            [trigger_name("%")],
        ).fetchall()
        for (table,) in rows:
            retire_table(table, self.using)


listener = Listener()


def enable() -> None:
    """At ``ready()`` when ``LISTEN_EXTERNAL_WRITES`` is on: mark Django's sessions, start listening."""
    from django.db.backends.signals import connection_created

    connection_created.connect(mark_session, weak=False, dispatch_uid="velro_cache.notify.mark_session")
    for connection in connections.all(initialized_only=True):
        if connection.connection is not None:
            mark_session(None, connection)
    if connections[DEFAULT_DB_ALIAS].vendor == "postgresql":
        listener.start()
