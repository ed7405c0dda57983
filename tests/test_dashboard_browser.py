"""The dashboard in a real browser: Debian's chromium, driven by Playwright, against gunicorn.

The example project runs under gunicorn (two sync workers, WhiteNoise serving
the admin's and the dashboard's static files, ``DJANGO_DEBUG=0``) on this
session's test database and a real Redis. Users log in through the admin's
login form. Staff with ``view_dashboard`` and ``run_dashboard_actions`` see
the charts drawn from the workers' traffic, see them refresh without a reload,
and run an action through its confirmation page; staff without the permission
get a 403 and non-staff the login page again.

Playwright launches ``/usr/bin/chromium`` (``make test`` installs it with apt
when missing); it never downloads a browser of its own. Set
``VELRO_DASHBOARD_SCREENSHOT=docs/dashboard.png`` to refresh the screenshot in docs/.
"""

from __future__ import annotations

import http.client
import os
from pathlib import Path

import pytest
import redis
from django.contrib.admin.models import LogEntry
from model_bakery import baker
from studio.models import ApiToken

from tests.redis_server import free_port
from tests.settings import redis_url
from tests.support import dashboard_account, example_env, start_gunicorn, stop_process, wait_for
from velro_cache.models import ViewRefresh

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REDIS_DB = 2
DASHBOARD = "/admin/velro_cache/dashboard/"

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
if not Path(CHROMIUM).exists():
    pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (make test does)", pytrace=False)


def get(port: int, path: str, headers: dict[str, str] | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@pytest.fixture
def server(transactional_db, tmp_path):
    redis.Redis.from_url(redis_url(REDIS_DB)).flushdb()
    port = free_port()
    env = example_env(redis_url(REDIS_DB))
    process = start_gunicorn(
        "example_project.wsgi:application", "--chdir", str(ROOT / "example_project"), "--workers", "2",
        "--worker-class", "sync", "--timeout", "60", port=port, env=env, stderr=tmp_path / "gunicorn.err",
    )
    try:
        wait_for(lambda: get(port, "/") == 200, "gunicorn did not start", 30, until_dead=process)
        yield port
    finally:
        stop_process(process)
        redis.Redis.from_url(redis_url(REDIS_DB)).flushdb()


@pytest.fixture
def browser(monkeypatch):
    # Playwright's sync API runs an event loop in this thread; the ORM calls the
    # test makes between browser steps are ordinary blocking ones, so Django's
    # async-safety guard does not apply to them.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


def log_in(browser, port: int, username: str):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(60_000)  # two cores shared with other suites: slow is not broken
    page.goto(f"http://127.0.0.1:{port}/admin/login/?next={DASHBOARD}")
    page.fill("#id_username", username)
    page.fill("#id_password", "secret-pw-1")
    page.click("input[type=submit]")
    page.wait_for_load_state("networkidle")
    return page


def test_staff_with_permission_sees_charts_drawn_and_runs_an_action_end_to_end(server, browser):
    operator = dashboard_account("operator", staff=True, perms=("view_dashboard", "run_dashboard_actions"))
    token = baker.make(ApiToken, user=operator).key
    for _ in range(40):  # traffic the workers count and publish
        assert get(server, "/api/me/", {"Authorization": f"Bearer {token}"}) == 200

    assert get(server, "/static/velro_cache/dashboard.js") == 200  # WhiteNoise under gunicorn, DEBUG off
    assert get(server, "/static/admin/css/base.css") == 200
    landing = browser.new_page()
    landing.goto(f"http://127.0.0.1:{server}/")
    assert landing.get_attribute("#link-dashboard", "href") == DASHBOARD

    page = log_in(browser, server, "operator")
    assert page.url.endswith(DASHBOARD)
    # WhiteNoise served the admin's stylesheet and the dashboard's script under gunicorn.
    assert page.evaluate("getComputedStyle(document.querySelector('#header')).backgroundColor") not in ("", "rgba(0, 0, 0, 0)")
    assert page.evaluate("typeof fetch") == "function"
    charts = page.locator("figure.velro-chart svg")
    assert charts.count() >= 4
    drawn = page.locator("figure.velro-chart svg .velro-series")
    assert drawn.count() >= 2, "no chart drew a series from the workers' traffic"
    box = charts.first.bounding_box()
    assert box and box["width"] > 200 and box["height"] > 50  # drawn at a readable size, not collapsed
    assert page.locator("tr.velro-worker").count() >= 1
    assert int(page.locator(".velro-reads").first.inner_text()) >= 40

    page.wait_for_function("document.getElementById('velro-dashboard').dataset.refreshes >= 1", timeout=20_000)
    assert page.locator("figure.velro-chart svg").count() >= 4  # the swapped-in fragment still draws

    screenshot = os.environ.get("VELRO_DASHBOARD_SCREENSHOT")
    if screenshot:
        page.screenshot(path=str(ROOT / screenshot), full_page=True)
    phone = browser.new_page(viewport={"width": 390, "height": 844})
    phone.context.add_cookies(page.context.cookies())
    phone.goto(f"http://127.0.0.1:{server}{DASHBOARD}")
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390 + 20  # no sideways page on a phone

    page.fill("#velro-target-refresh_view", "studio_active_users_24h")
    page.click("form[data-action=refresh_view] button")
    page.wait_for_selector("#velro-confirm")
    assert "studio_active_users_24h" in page.inner_text(".velro-confirm-target")
    manual = ViewRefresh.objects.filter(view="studio_active_users_24h", trigger="manual", error="")
    assert not manual.exists()  # nothing before the confirmation (writes above may have refreshed it on their own)
    page.click("#velro-confirm")
    page.wait_for_selector(".messagelist")
    assert "Refreshed view 'studio_active_users_24h'" in page.inner_text(".messagelist")
    assert manual.count() == 1
    assert LogEntry.objects.filter(user=operator, change_message__contains="studio_active_users_24h").exists()
    assert "Manual (code)" in page.inner_text("tr.velro-view[data-view=studio_active_users_24h]")  # its refresh log


def test_a_bad_target_in_the_browser_answers_with_a_message(server, browser):
    dashboard_account("operator", staff=True, perms=("view_dashboard", "run_dashboard_actions"))
    page = log_in(browser, server, "operator")
    page.fill("#velro-target-refresh_view", "no_such_view")
    page.click("form[data-action=refresh_view] button")
    page.wait_for_selector(".messagelist")
    assert "No materialized view 'no_such_view'" in page.inner_text(".messagelist")
    assert not ViewRefresh.objects.filter(trigger="manual").exists() and not LogEntry.objects.exists()


def test_staff_without_the_permission_is_refused(server, browser):
    dashboard_account("staffer", staff=True)
    page = log_in(browser, server, "staffer")
    response = page.goto(f"http://127.0.0.1:{server}{DASHBOARD}")
    assert response.status == 403
    assert page.locator("figure.velro-chart").count() == 0


def test_non_staff_gets_the_login_page_again(server, browser):
    dashboard_account("member", staff=False, perms=("view_dashboard",))
    page = log_in(browser, server, "member")
    assert "/admin/login/" in page.url
    assert page.locator("#id_username").count() == 1
    assert page.locator("figure.velro-chart").count() == 0


def test_an_operator_turns_a_switch_off_in_the_browser_and_every_worker_applies_it(server, browser):
    """The Switches table and the switch action, end to end: confirmation, admin log, the value in Redis, the workers' pages."""
    operator = dashboard_account("operator", staff=True, perms=("view_dashboard", "run_dashboard_actions"))
    page = log_in(browser, server, "operator")
    row = "tr.velro-switch[data-switch=warming]"
    assert page.inner_text(f"{row} .velro-switch-percent") == "on"

    page.fill("#velro-target-switch", "warming=off")
    page.click("form[data-action=switch] button")
    page.wait_for_selector("#velro-confirm")
    assert "warming=off" in page.inner_text(".velro-confirm-target")
    hash_in_redis = redis.Redis.from_url(redis_url(REDIS_DB), decode_responses=True)
    assert hash_in_redis.hget("velro:{switches}", "warming") is None  # nothing before the confirmation
    page.click("#velro-confirm")
    page.wait_for_selector(".messagelist")
    assert hash_in_redis.hget("velro:{switches}", "warming") == "off"
    assert LogEntry.objects.filter(user=operator, change_message__contains="warming").exists()

    def every_worker_shows_it_off() -> bool:
        # Two workers, each page rendered by whichever takes it: several loads in a row all say off.
        for _ in range(4):
            page.goto(f"http://127.0.0.1:{server}{DASHBOARD}")
            if page.inner_text(f"{row} .velro-switch-percent") != "off" or page.inner_text(f"{row} .velro-switch-runtime") != "0 %":
                return False
        return True

    wait_for(every_worker_shows_it_off, "the workers did not apply the switch within their refresh", 10)

    page.fill("#velro-target-switch", "warming=sometimes")
    page.click("form[data-action=switch] button")
    page.wait_for_selector(".messagelist")
    assert "Nothing was changed" in page.inner_text(".messagelist")
    assert hash_in_redis.hget("velro:{switches}", "warming") == "off"
