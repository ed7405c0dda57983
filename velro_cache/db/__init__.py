"""L3: materialized views — migration operations, a read-only model base, refresh, cached reads.

- ``operations``: CreateMaterializedView / DropMaterializedView / RefreshMaterializedView.
- ``models``: MaterializedView, the unmanaged, read-only model base.
- ``refresh``: refresh now, after writes (debounced), on a schedule; the refresh log.
- ``reads``: cached reads of views, with a TTL tied to the view's refresh period.
- ``sql``: the per-database SQL (PostgreSQL native, SQLite emulated).

Nothing is imported here on purpose: migration files import ``operations``
before the app registry is ready, and that must not pull in models.
"""
