"""The admin dashboard through Django's test client, on the real PostgreSQL and Redis.

Who may see it (staff with ``view_dashboard``), who may act (plus
``run_dashboard_actions``), what the page shows (charts drawn as SVG, every
worker, the views with their refresh log, alerts), the actions end to end
(confirmation, CSRF, the change itself, the admin log), bad input (a message,
nothing changed) and Redis down (this worker's figures under a banner).
"""

from __future__ import annotations

import uuid

import pytest
from django.contrib.admin.models import LogEntry
from django.core.cache import caches
from django.test import Client, override_settings

from tests.settings import redis_url
from tests.support import DASHBOARD_URL, caches_in_force, dashboard_client, eventually, post_dashboard_action
from velro_cache.models import ViewRefresh
from velro_cache.reads import cached_read
from velro_cache.telemetry import store

pytestmark = pytest.mark.django_db

URL = DASHBOARD_URL
ACTION = URL + "action/"
REDIS_DB = 6
CACHES = {"default": {"BACKEND": "velro_cache.backends.TieredCache", "LOCATION": redis_url(REDIS_DB), "KEY_PREFIX": "velro-dashboard-tests"}}


@pytest.fixture(autouse=True)
def dashboard_redis():
    with caches_in_force(CACHES, flush=redis_url(REDIS_DB)) as client:
        yield client


def viewer() -> Client:
    return dashboard_client("viewer", perms=("view_dashboard",))


def operator() -> Client:
    return dashboard_client("operator", perms=("view_dashboard", "run_dashboard_actions"))


def test_anonymous_visitors_get_the_admin_login():
    response = Client().get(URL)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_a_logged_in_user_who_is_not_staff_gets_the_admin_login():
    response = dashboard_client("someone", staff=False, perms=("view_dashboard",)).get(URL)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_staff_without_the_permission_is_refused_and_sees_no_link():
    client = dashboard_client("staffer")
    assert client.get(URL).status_code == 403
    assert client.get(URL + "live/").status_code == 403
    assert URL not in client.get("/admin/").content.decode()


def test_staff_with_the_permission_sees_figures_charts_workers_and_views_and_the_index_links_it():
    caches["default"].set("gen:1", "x")
    for _ in range(3):
        caches["default"].get("gen:1")
    client = viewer()
    assert URL in client.get("/admin/").content.decode()
    page = client.get(URL)
    html = page.content.decode()
    assert page.status_code == 200
    assert html.count("<svg") >= 4  # hit rate per tier and per data type, latency, L1 occupancy
    assert 'class="velro-worker"' in html and store.worker_id() in html
    assert "studio_" in html and "never refreshed" in html  # the example's views, none refreshed in this database
    assert "Redis does not answer" not in html
    assert 'name="action"' not in html  # no actions without their permission


def test_the_live_fragment_carries_the_figures_without_the_page_around_them():
    client = viewer()
    caches["default"].get("gen:live")
    fragment = client.get(URL + "live/").content.decode()
    assert "<svg" in fragment and "velro-workers" in fragment and "<html" not in fragment


def test_the_page_shows_what_adaptive_ttl_made_of_each_data_types_ttl():
    from velro_cache import ttl

    ttl.reset_effect()
    try:
        with override_settings(VELRO_CACHE={"TTL_JITTER": 0}):
            ttl.ttl_for(f"generation:{uuid.uuid4().hex}:meta")  # a subject with no reads or changes yet: x1
        html = viewer().get(URL).content.decode()
    finally:
        ttl.reset_effect()
    row = html[html.index('class="velro-ttl-row" data-type="generation"') :].split("</tr>")[0]
    assert "300 s" in row and "&times;1.00" in row


def test_a_viewer_cannot_run_actions():
    client = viewer()
    response = post_dashboard_action(client, {"action": "invalidate_data_type", "target": "generation", "confirmed": "yes"})
    assert response.status_code == 403


def test_an_action_without_the_csrf_token_is_refused():
    response = operator().post(ACTION, {"action": "invalidate_data_type", "target": "generation", "confirmed": "yes"})
    assert response.status_code == 403


def test_an_action_asks_for_confirmation_first_and_changes_nothing_until_confirmed():
    cache = caches["default"]
    cache.set("gen:5", "cached")
    client = operator()
    response = post_dashboard_action(client, {"action": "invalidate_data_type", "target": "generation"})
    assert response.status_code == 200 and 'name="confirmed" value="yes"' in response.content.decode()
    assert cache.get("gen:5") == "cached"
    assert not LogEntry.objects.exists()


def loads(key: str) -> bool:
    """Whether a read through the cache (``cached_read``, as the app's code reads) had to call its loader."""
    called = []
    cached_read(key, lambda: called.append(1) or "loaded")
    return bool(called)


def cached(key: str) -> None:
    """Read ``key`` until the cache answers it without its loader."""
    assert eventually(lambda: not loads(key)), f"{key} never came from the cache"


@pytest.mark.django_db(transaction=True)  # invalidations run when the request's transaction commits
def test_invalidating_a_data_type_retires_it_and_leaves_an_admin_log_entry():
    client = operator()
    cached("gen:5")
    cached("config:banner")
    response = post_dashboard_action(client, {"action": "invalidate_data_type", "target": "generation", "confirmed": "yes"})
    assert response.status_code == 302
    assert loads("gen:5")
    assert not loads("config:banner")
    entry = LogEntry.objects.get()
    assert entry.user.username == "operator" and "generation" in entry.change_message
    assert "Invalidated data type" in client.get(URL).content.decode()  # the message shown after the redirect


@pytest.mark.django_db(transaction=True)
def test_invalidating_a_declared_namespace_retires_only_it():
    cached("session:user:7:prefs")
    cached("session:user:8:prefs")
    response = post_dashboard_action(operator(), {"action": "invalidate_namespace", "target": "session:user:7", "confirmed": "yes"})
    assert response.status_code == 302
    assert loads("session:user:7:prefs")
    assert not loads("session:user:8:prefs")


def test_refreshing_a_view_runs_it_and_records_it():
    client = operator()
    response = post_dashboard_action(client, {"action": "refresh_view", "target": "studio_active_users_24h", "confirmed": "yes"})
    assert response.status_code == 302, response.content
    assert ViewRefresh.objects.filter(view="studio_active_users_24h", error="").exists()
    assert LogEntry.objects.filter(change_message__contains="studio_active_users_24h").exists()
    assert "Refreshed view" in client.get(URL).content.decode()


def test_warming_a_step_runs_it_and_records_it():
    """The example project declares Velro's plan; its system_config step warms every SystemConfig value."""
    from studio.models import SystemConfig

    SystemConfig.objects.create(key="banner", value="hello")
    client = operator()
    response = post_dashboard_action(client, {"action": "warm", "target": "system_config", "confirmed": "yes"})
    assert response.status_code == 302, response.content
    page = client.get(URL).content.decode()
    assert "Warmed &#x27;system_config&#x27;: 1 entries" in page or "Warmed 'system_config': 1 entries" in page, page
    assert LogEntry.objects.filter(change_message__contains="system_config").exists()
    assert "<li>system_config: done, 1 entries" in page  # the worker's warming results, in its row of the Warming table


@pytest.mark.parametrize(
    ("action", "target"),
    [
        ("refresh_view", "no_such_view"),
        ("invalidate_namespace", "nosuchthing"),
        ("invalidate_namespace", "gen:1:2:3:4:5:6"),
        ("invalidate_data_type", "no_such_type"),
        ("drop_everything", "x"),
        ("invalidate_data_type", ""),
        ("warm", "no_such_step"),
    ],
)
@pytest.mark.django_db(transaction=True)
def test_bad_input_answers_with_a_message_and_changes_nothing(action, target):
    client = operator()
    cached("gen:5")
    response = post_dashboard_action(client, {"action": action, "target": target, "confirmed": "yes"})
    assert response.status_code == 302
    page = client.get(URL).content.decode()
    assert 'class="error"' in page
    assert any(said in page for said in ("Nothing was changed", "say which", "Unknown action"))
    assert not loads("gen:5")
    assert not LogEntry.objects.exists()
    assert not ViewRefresh.objects.exists()


def test_with_redis_down_the_page_shows_this_workers_figures_under_a_banner():
    dead = {"default": {**CACHES["default"], "LOCATION": "redis://127.0.0.1:1/0"}}
    store.reset_clients()
    with override_settings(CACHES=dead):
        caches["default"].get("gen:1")
        response = viewer().get(URL)
    html = response.content.decode()
    assert response.status_code == 200
    assert "Redis does not answer" in html and "this worker's figures only" in html
    assert store.worker_id() in html
