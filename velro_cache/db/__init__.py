"""L3: materialized views — migration operations, a read-only model base, refresh, cached reads.

One module per concern, each importing only those listed before it:

- ``sql``: the per-database SQL (PostgreSQL native, SQLite emulated).
- ``notify``: the trigger's SQL, Django's sessions marked, the LISTEN thread that retires.
- ``operations``: CreateMaterializedView / DropMaterializedView / RefreshMaterializedView, and
  CaptureWrites (a trigger that NOTIFYs writes made outside Django; ``notify`` listens).
- ``registry``: which views exist, their sources, periods and databases (``register_view``).
- ``refreshlog``: the ``ViewRefresh`` rows every refresh writes, and staleness read from them.
- ``refresh``: the engine: refresh now, one refresh of a view at a time (``refresh_view``).
- ``worker``: a generic debouncing background thread.
- ``schedule``: the background thread that refreshes off the request path, and the periodic schedule.
- ``writes``: which writes refresh which views (signals, ``refresh_after_commit``).
- ``models``: MaterializedView, the unmanaged, read-only model base.
- ``reads``: cached reads of views (through ``velro_cache.reads``), with a TTL tied to the view's refresh period.

Nothing is imported here on purpose: migration files import ``operations``
before the app registry is ready, and that must not pull in models.
"""
