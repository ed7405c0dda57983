"""The Switches table and the switch action of the admin dashboard, through Django's test client.

Viewers see each switch's setting, runtime value and the percentage in force;
operators (``run_dashboard_actions``) change one through the same
confirmation page as every other action, with the CSRF token, and the change
lands in Redis (where every worker reads it), in the admin log and in a
message. Bad input answers with a message and changes nothing.
"""

from __future__ import annotations

import html

import pytest
from django.contrib.admin.models import LogEntry
from django.test import Client, override_settings

from tests.settings import redis_url
from tests.support import DASHBOARD_URL, caches_in_force, dashboard_client, post_dashboard_action
from velro_cache import switches

pytestmark = pytest.mark.django_db

URL = DASHBOARD_URL
ACTION = URL + "action/"
REDIS_DB = 1
CACHES = {"default": {"BACKEND": "velro_cache.backends.TieredCache", "LOCATION": redis_url(REDIS_DB), "KEY_PREFIX": "velro-switches"}}


@pytest.fixture(autouse=True)
def switch_redis():
    with caches_in_force(CACHES, flush=redis_url(REDIS_DB)) as client:
        yield client


def operator() -> Client:
    return dashboard_client("operator", perms=("view_dashboard", "run_dashboard_actions"))


def csrf_post(client: Client, data: dict) -> object:
    return post_dashboard_action(client, data, follow=True)


def text(page) -> str:
    return html.unescape(page.content.decode())


def test_viewers_see_every_switch_with_its_setting_runtime_value_and_what_is_in_force(switch_redis):
    switch_redis.hset(switches.HASH_KEY, "compression", "30")
    switches.refresh()
    with override_settings(CACHES=CACHES, VELRO_CACHE={"SWITCHES": {"l1": False}, "TELEMETRY_INTERVAL": 0}):
        page = dashboard_client("viewer", perms=("view_dashboard",)).get(URL)
    shown = page.content.decode()
    assert page.status_code == 200 and "<h2>Switches</h2>" in shown
    for name in switches.REGISTRY:
        assert f'data-switch="{name}"' in shown
    rows = {row["name"]: row for row in page.context["switches"]}
    assert (rows["compression"]["setting"], rows["compression"]["runtime"], rows["compression"]["percent"]) == (100.0, 30.0, 30.0)
    assert (rows["l1"]["setting"], rows["l1"]["runtime"], rows["l1"]["percent"]) == (0.0, None, 0.0)
    assert 'data-action="switch"' not in shown  # viewing is not acting


def test_setting_a_switch_asks_for_confirmation_then_writes_it_for_every_worker_and_logs_it(switch_redis):
    client = operator()
    page = csrf_post(client, {"action": "switch", "target": "compression=off"})
    assert 'name="confirmed" value="yes"' in page.content.decode()
    assert switch_redis.hgetall(switches.HASH_KEY) == {}  # nothing changed before the confirmation
    page = csrf_post(client, {"action": "switch", "target": "compression=off", "confirmed": "yes"})
    assert switch_redis.hget(switches.HASH_KEY, "compression") == b"off"
    assert switches.percent("compression") == 0.0
    assert "Switch 'compression' set to 0 %" in text(page)
    assert LogEntry.objects.filter(change_message__contains="Switch 'compression' set to 0 %").count() == 1
    page = csrf_post(client, {"action": "switch", "target": "compression=clear", "confirmed": "yes"})
    assert switch_redis.hgetall(switches.HASH_KEY) == {} and "Cleared switch 'compression'" in text(page)


def test_a_percentage_is_taken(switch_redis):
    csrf_post(operator(), {"action": "switch", "target": "authz_cache=25", "confirmed": "yes"})
    assert switch_redis.hget(switches.HASH_KEY, "authz_cache") == b"25"


@pytest.mark.parametrize("target", ["compression=sometimes", "l2=off", "compression", "compression=150", "=off"])
def test_a_bad_switch_target_answers_with_a_message_and_changes_nothing(switch_redis, target):
    page = csrf_post(operator(), {"action": "switch", "target": target, "confirmed": "yes"})
    assert "Nothing was changed." in text(page)
    assert switch_redis.hgetall(switches.HASH_KEY) == {} and not LogEntry.objects.exists()


def test_without_the_csrf_token_or_the_permission_nothing_changes(switch_redis):
    assert operator().post(ACTION, {"action": "switch", "target": "l1=off", "confirmed": "yes"}).status_code == 403
    viewer = dashboard_client("viewer", perms=("view_dashboard",))
    assert csrf_post(viewer, {"action": "switch", "target": "l1=off", "confirmed": "yes"}).status_code == 403
    assert switch_redis.hgetall(switches.HASH_KEY) == {}
