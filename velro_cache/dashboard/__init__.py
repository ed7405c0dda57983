"""The admin dashboard at ``/admin/velro_cache/dashboard/``: figures, charts, alerts, and a few actions.

``models`` holds the permissions (an unmanaged model without a table), ``data``
gathers what the page shows, ``charts`` draws it as SVG on the server (no
script or CDN needed to see a chart), ``actions`` validates and runs the
invalidate / refresh actions, and ``velro_cache.admin`` serves the pages.
"""
