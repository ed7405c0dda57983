"""The test settings on SQLite: the leg that proves the materialized-view emulation.

``make test-sqlite`` runs tests/test_materialized_views.py with these settings
(``--ds tests.settings_sqlite``); ``make test`` runs it after the main suite.
Everything but the database comes from tests.settings. The test database is a
file, not SQLite's shared in-memory database: the refresh tests read from one
connection while another rewrites the view, and only a file in WAL mode lets a
reader keep its snapshot instead of failing with "database table is locked".
"""

import os
import tempfile

from tests.settings import *

_DIR = os.environ.get("VELRO_TEST_SQLITE_DIR") or tempfile.gettempdir()

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(_DIR, "velro_cache_sqlite_main.sqlite3"),
        "OPTIONS": {
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
        "TEST": {"NAME": os.path.join(_DIR, f"velro_cache_test_{os.getpid()}.sqlite3")},
    }
}
