"""The example project's landing page at ``/``: it links the dashboard, the admin, the API and the metrics."""

from __future__ import annotations

import pytest
from django.test import Client


@pytest.mark.django_db
def test_the_landing_page_links_everything_a_visitor_looks_for():
    response = Client().get("/")
    html = response.content.decode()
    assert response.status_code == 200
    for link in ('href="/admin/velro_cache/dashboard/"', 'href="/admin/"', 'href="/api/me/"', 'href="/metrics"'):
        assert link in html, link
    metrics = Client().get("/metrics")
    assert metrics.status_code == 200 and b"velro_cache_requests_total" in metrics.content
    # The example's views have an empty refresh log in the test database.
    assert b'velro_cache_view_staleness_seconds{view="studio_active_users_24h"} +Inf' in metrics.content
