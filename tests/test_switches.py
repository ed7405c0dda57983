"""The optimization switches on the real Redis and PostgreSQL: off gives the plain behaviour, per switch.

Each test first shows the optimization at work (the control), then turns its
switch off at runtime, through ``velro_cache.switches.set`` and the hash in
Redis as every worker reads it, and checks the plain behaviour. Then the
rollout (stable splits by user or key), the refusal of a garbage runtime
value, the settings, and ``velro_switch``.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
import threading
import uuid

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.signals import request_started
from django.test import override_settings
from model_bakery import baker
from studio.models import Generation, Role, Team, TeamMembership

from tests.support import ROOT, behind, caches_in_force, eventually
from velro_cache import authz, switches
from velro_cache.conf import parse_settings
from velro_cache.db.reads import read_view
from velro_cache.keys import build_key
from velro_cache.serializers import _LZ4_CODECS
from velro_cache.telemetry import store
from velro_cache.ttl import record_read, sketch, ttl_for
from velro_cache.warming import Plan, Step, results
from velro_cache.warming.results import SKIPPED
from velro_cache.warming.run import warm
from velro_cache.warming.runtime import drain, predictor_results, preload


@pytest.fixture(autouse=True)
def runtime():
    """No runtime value before or after a test: the hash in Redis and this process's copy are cleared."""
    store.client().delete(switches.HASH_KEY)
    switches.reset()
    yield store.client()
    store.client().delete(switches.HASH_KEY)
    switches.reset()


def counts(cache) -> dict:
    return cache.stats()["totals"]


def l1_serving(cache, key: str) -> bool:
    """Read until L1 answers (it trusts itself from the listener's first PONG on)."""
    before = counts(cache)["l1_hits"]
    return bool(eventually(lambda: cache.get(key) is not None and counts(cache)["l1_hits"] > before, 5))


# -- each switch off gives the plain behaviour ---------------------------------------------


def test_l1_off_every_read_goes_to_redis_and_held_copies_are_dropped(make_cache):
    cache = make_cache()
    cache.set("gen:1:meta", {"title": "one"})
    assert l1_serving(cache, "gen:1:meta")  # the control: L1 serves
    switches.set(switches.L1, "off")
    assert len(cache._l1) == 0  # copies held under the old decision are gone
    before = counts(cache)
    for _ in range(5):
        assert cache.get("gen:1:meta") == {"title": "one"}
    cache.set("gen:2:meta", {"title": "two"})
    assert cache.get("gen:2:meta") == {"title": "two"}
    after = counts(cache)
    assert after["l1_hits"] == before["l1_hits"] and after["l2_hits"] == before["l2_hits"] + 6
    assert len(cache._l1) == 0
    # Batch reads promote together (ProcessState.fill_l1_many): the switch holds there too.
    assert cache.get_many(["gen:1:meta", "gen:2:meta"]) == {"gen:1:meta": {"title": "one"}, "gen:2:meta": {"title": "two"}}
    assert asyncio.run(cache.aget_many(["gen:1:meta"])) == {"gen:1:meta": {"title": "one"}}
    assert len(cache._l1) == 0
    assert counts(cache)["l1_hits"] == before["l1_hits"]
    switches.set(switches.L1, "on")
    assert l1_serving(cache, "gen:1:meta")


def test_l1_off_leaves_an_l1_only_cache_its_only_tier(make_cache):
    cache = make_cache(l2=False)
    switches.set(switches.L1, "off")
    cache.set("gen:1:meta", "kept")
    assert cache.get("gen:1:meta") == "kept"


def _stored_codec(cache, key: str) -> int:
    full = cache.make_key(key)
    return cache._serializer.unframe(behind(cache).get(full), key=full).codec


def test_compression_off_stores_frames_uncompressed_and_still_reads_compressed_ones(make_cache):
    cache = make_cache(options={"COMPRESS_MIN_BYTES": 64})
    value = {"text": "velro " * 200}
    cache.set("gen:1:meta", value)
    assert _stored_codec(cache, "gen:1:meta") in _LZ4_CODECS  # the control: compressed
    switches.set(switches.COMPRESSION, "off")
    cache.set("gen:2:meta", value)
    assert _stored_codec(cache, "gen:2:meta") not in _LZ4_CODECS
    reader = make_cache(like=cache, options={"COMPRESS_MIN_BYTES": 64})  # another process: L2 answers
    assert reader.get("gen:1:meta") == value and reader.get("gen:2:meta") == value
    assert counts(reader)["l2_hits"] == 2


def test_adaptive_ttl_off_gives_the_data_type_ttl(settings):
    settings.VELRO_CACHE = {**settings.VELRO_CACHE, "TTL_JITTER": 0}
    key = build_key("generation", uuid.uuid4().hex, "meta")
    sketch.clear()
    for _ in range(64):
        record_read(key)
    assert ttl_for(key) > 300  # the control: a hot, unchanged key lives longer
    switches.set(switches.ADAPTIVE_TTL, "off")
    assert ttl_for(key) == 300.0


def _hot_hits(cache) -> float:
    """The share of reads of a hot set that L1 answers while scans larger than the L1 pass between them.

    Read-through on an L1-only cache: a miss is filled with a set, as a loader would.
    """
    def read(key: str) -> bool:
        if cache.get(key) is not None:
            return True
        cache.set(key, "v" * 100)
        return False

    hot = [f"hot:{number}" for number in range(20)]
    for _ in range(10):
        for key in hot:
            read(key)
    hits = 0
    for chunk in range(30):
        for number in range(600):
            read(f"scan:{chunk}:{number}")
        hits += sum(read(key) for key in hot)
    return hits / (30 * len(hot))


def test_eviction_policy_off_evicts_in_plain_lru_order(make_cache):
    assert _hot_hits(make_cache(l2=False, max_bytes=64 * 1024)) > 0.9  # the control: W-TinyLFU keeps the hot set
    switches.set(switches.EVICTION_POLICY, "off")
    lru = make_cache(l2=False, max_bytes=64 * 1024 + 1)  # a new L1 (another budget): built under the switch
    assert lru._l1.eviction_stats()["policy"] == "lru"
    assert _hot_hits(lru) == 0.0  # each scan flushes it, as in any LRU
    held = lru._l1
    held.set("a", 1, 1, None)
    held.set("b", 2, 1, None)
    assert held.get("a") == 1
    held.maintenance()
    assert list(held._eviction.order)[-2:] == ["b", "a"]  # a read makes a key the most recently used


def test_eviction_policy_off_takes_a_get_many_batch_from_redis(make_cache):
    """A get_many promotes its whole batch into L1 in one pass; the LRU takes it as W-TinyLFU does."""
    writer = make_cache()
    values = {f"record:{number}": {"id": number} for number in range(20)}
    writer.set_many(values)
    switches.set(switches.EVICTION_POLICY, "off")
    reader = make_cache(like=writer)  # another "process": its L1 built under the switch
    assert reader._l1.eviction_stats()["policy"] == "lru"
    assert reader.get_many(list(values)) == values
    assert reader._l1.eviction_stats()["entries"] == len(values)  # promoted into the LRU, one batch
    assert reader.get_many(list(values)) == values


def test_turning_eviction_policy_off_switches_a_live_l1_in_place(make_cache):
    cache = make_cache(l2=False, max_bytes=256 * 1024)
    cache.set("kept", "value")
    switches.set(switches.EVICTION_POLICY, "off")
    assert cache._l1.eviction_stats()["policy"] == "lru" and cache.get("kept") == "value"
    switches.clear(switches.EVICTION_POLICY)
    assert "policy" not in cache._l1.eviction_stats() and cache.get("kept") == "value"


def test_a_set_that_changes_nothing_returns_after_the_hooks_of_the_change_that_did(runtime):
    """The refresher applied the value first and is still running its hooks: ``set`` waits for them.

    Else ``set(EVICTION_POLICY, ...)`` could return while every L1 still has
    its old policy (the refresher, nudged, read the hash before our own apply).
    """
    in_hook, release, finished = threading.Event(), threading.Event(), threading.Event()

    def slow_hook(name: str) -> None:
        if name == switches.COMPRESSION:
            in_hook.set()
            release.wait(5)
            finished.set()

    switches.on_change(slow_hook)
    try:
        runtime.hset(switches.HASH_KEY, switches.COMPRESSION, "0")
        refresher = threading.Thread(target=switches.refresh)  # as the refresher thread would, nudged
        refresher.start()
        assert in_hook.wait(5)
        threading.Timer(0.2, release.set).start()
        switches.set(switches.COMPRESSION, "off")  # nothing left to change here
        assert finished.is_set(), "set returned while the change's hooks were still running"
        refresher.join(5)
    finally:
        release.set()
        switches._hooks.remove(slow_hook)


def test_warming_off_runs_no_step_and_says_so():
    ran = []
    plan = Plan(steps=(Step("config", lambda: ran.append("config") or 1), Step("users", lambda: ran.append("users") or 1)), name="sw")
    assert warm(plan).entries == 2 and ran == ["config", "users"]  # the control
    switches.set(switches.WARMING, "off")
    ran.clear()
    run = warm(plan)
    assert ran == [] and run.entries == 0
    assert [(step.status, step.error) for step in run.steps] == [(SKIPPED, "the warming switch is off")] * 2
    assert results()["last_run"]["steps"][0]["error"] == "the warming switch is off"


def test_warming_off_queues_no_runtime_preload():
    loads = []
    switches.set(switches.WARMING, "off")
    assert not preload("login-sw", lambda: loads.append(1) or [], dedupe=("user", 1))
    assert drain() and loads == [] and predictor_results()["login-sw"]["switched_off"] == 1


@pytest.mark.django_db(transaction=True)
def test_authorization_caching_off_runs_the_query_for_every_check(django_assert_num_queries):
    team = baker.make(Team)
    generation = baker.make(Generation, owner=baker.make(User), team=team, status="succeeded")
    viewer = baker.make(User, is_active=True)
    baker.make(TeamMembership, team=team, user=viewer, role=Role.VIEWER)
    with authz.scope():
        assert authz.authorize(viewer, generation, "read")
    with authz.scope(), django_assert_num_queries(0):  # the control: served from the cache
        assert authz.authorize(viewer, generation, "read")
    switches.set(switches.AUTHZ_CACHE, "off")
    for _ in range(2):
        with authz.scope(), django_assert_num_queries(1):
            assert authz.authorize(viewer, generation, "read")


def test_read_your_writes_off_sends_no_ping_at_a_request_start(make_cache, private_redis):
    make_cache(location=private_redis.url(), options={"STALENESS_BOUND": 60})  # its listener pings every 15 s alone
    client = private_redis.client()

    def pings_for_requests(n: int) -> int:
        before = client.info("commandstats").get("cmdstat_ping", {}).get("calls", 0)
        for _ in range(n):
            request_started.send(sender=None, environ={"HTTP_COOKIE": "sessionid=abc"})
        return client.info("commandstats").get("cmdstat_ping", {}).get("calls", 0) - before

    assert pings_for_requests(20) >= 20  # the control: one PING per request start
    switches.set(switches.READ_YOUR_WRITES, "off")
    # None per request; the listener's own PING (every STALENESS_BOUND / 4, or
    # its first after the switch's nudge) may fall inside the window once.
    assert pings_for_requests(20) <= 1


def test_view_reads_off_read_the_live_tables_uncached(make_cache):
    cache = make_cache()
    view_rows, live_rows = [], []

    def from_view():
        view_rows.append(1)
        return ["snapshot"]

    def from_live_tables():
        live_rows.append(1)
        return ["live"]

    for _ in range(2):
        assert read_view("sw_view", "all", from_view, cache=cache, live=from_live_tables) == ["snapshot"]
    assert (len(view_rows), len(live_rows)) == (1, 0)  # the control: the view, read once and cached
    switches.set(switches.VIEW_READS, "off")
    for _ in range(2):
        assert read_view("sw_view", "all", from_view, cache=cache, live=from_live_tables) == ["live"]
    assert (len(view_rows), len(live_rows)) == (1, 2)


@pytest.mark.django_db(transaction=True)
def test_view_reads_off_query_the_live_table_not_the_view(make_cache):
    """On PostgreSQL: a row added after the view's refresh is missing from the view and present live."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from studio.models import RecentGeneration

    from velro_cache.db.refresh import refresh_view

    owner = baker.make(User)
    baker.make(Generation, owner=owner, status="succeeded")
    refresh_view(RecentGeneration)
    newer = baker.make(Generation, owner=owner, status="succeeded")
    cache = make_cache()

    def ids_from_view():
        return sorted(RecentGeneration.objects.values_list("id", flat=True))

    def ids_live():
        return sorted(Generation.objects.values_list("id", flat=True))

    assert newer.pk not in read_view(RecentGeneration, "ids", ids_from_view, cache=cache, live=ids_live)
    switches.set(switches.VIEW_READS, "off")
    with CaptureQueriesContext(connection) as queries:
        assert newer.pk in read_view(RecentGeneration, "ids", ids_from_view, cache=cache, live=ids_live)
    tables = " ".join(query["sql"] for query in queries.captured_queries)
    assert Generation._meta.db_table in tables and RecentGeneration._meta.db_table not in tables


# -- rollout ----------------------------------------------------------------------------------


def test_a_percentage_splits_users_stably_and_raising_it_only_adds_users():
    users = range(20_000)
    switches.set(switches.AUTHZ_CACHE, 25)
    quarter = {user for user in users if switches.on(switches.AUTHZ_CACHE, user)}
    assert 0.23 < len(quarter) / len(users) < 0.27
    assert quarter == {user for user in users if switches.on(switches.AUTHZ_CACHE, user)}  # stable
    switches.set(switches.AUTHZ_CACHE, "50%")
    half = {user for user in users if switches.on(switches.AUTHZ_CACHE, user)}
    assert quarter < half and 0.48 < len(half) / len(users) < 0.52


def test_a_split_is_the_same_in_every_process_and_differs_between_switches():
    keys = [f"gen:{number}:meta" for number in range(2000)]
    switches.set(switches.COMPRESSION, 30)
    switches.set(switches.L1, 30)
    here = [switches.on(switches.COMPRESSION, key) for key in keys]
    script = (
        "import json, sys; from velro_cache import switches; switches._runtime['compression'] = 30.0; "
        f"print(json.dumps([switches.on('compression', k) for k in {keys!r}]))"
    )
    other = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env={"PYTHONPATH": str(ROOT)}, cwd=ROOT
    )
    assert json.loads(other.stdout) == here  # python's hash() would differ per process; this does not
    assert here != [switches.on(switches.L1, key) for key in keys]


def test_a_percentage_of_keys_compresses_that_share_of_them(make_cache):
    cache = make_cache(options={"COMPRESS_MIN_BYTES": 64})
    switches.set(switches.COMPRESSION, 50)
    keys = [f"gen:{number}:meta" for number in range(200)]
    for key in keys:
        cache.set(key, {"text": "velro " * 50})
    compressed = [key for key in keys if _stored_codec(cache, key) in _LZ4_CODECS]
    assert compressed == [key for key in keys if switches.on(switches.COMPRESSION, cache.make_key(key))]
    assert 60 < len(compressed) < 140


# -- runtime values that do not parse ------------------------------------------------------------


def test_a_garbage_runtime_value_is_refused_with_a_warning_and_the_last_good_one_stays(runtime, caplog):
    switches.set(switches.COMPRESSION, "off")
    runtime.hset(switches.HASH_KEY, switches.COMPRESSION, "mostly")
    runtime.hset(switches.HASH_KEY, "l2", "off")
    with caplog.at_level(logging.WARNING, logger="velro_cache.switches"):
        assert switches.refresh()
        assert switches.refresh()  # warned once per bad value, not every second
    assert switches.percent(switches.COMPRESSION) == 0.0
    refused = [record.getMessage() for record in caplog.records if "refusing" in record.getMessage()]
    assert len(refused) == 2 and any("'mostly'" in message and "keeping off" in message for message in refused)
    runtime.hset(switches.HASH_KEY, switches.COMPRESSION, "40")
    switches.refresh()
    assert switches.percent(switches.COMPRESSION) == 40.0


def test_a_garbage_value_with_no_good_one_before_leaves_the_setting(runtime):
    runtime.hset(switches.HASH_KEY, switches.L1, "101")
    switches.refresh()
    assert switches.get(switches.L1).runtime is None and switches.percent(switches.L1) == 100.0


@pytest.mark.parametrize("value", ["maybe", 101, -1, float("nan"), "", None, [50]])
def test_set_refuses_what_does_not_parse_and_writes_nothing(runtime, value):
    with pytest.raises(ValueError):
        switches.set(switches.L1, value)
    assert runtime.hgetall(switches.HASH_KEY) == {}


def test_an_unknown_switch_is_refused():
    with pytest.raises(LookupError):
        switches.set("l2", "off")


def test_clearing_a_runtime_value_brings_back_the_setting(settings):
    settings.VELRO_CACHE = {**settings.VELRO_CACHE, "SWITCHES": {"compression": 20}}
    switches.set(switches.COMPRESSION, "on")
    assert switches.percent(switches.COMPRESSION) == 100.0
    switches.clear(switches.COMPRESSION)
    assert switches.get(switches.COMPRESSION).as_dict() | {"off_means": ""} == {
        "name": "compression", "off_means": "", "keyed_on": "key", "setting": 20.0, "runtime": None, "percent": 20.0,
    }


def test_redis_down_keeps_the_last_good_values(own_redis):
    with caches_in_force({"default": {"BACKEND": "velro_cache.backends.TieredCache", "LOCATION": own_redis.url()}}):
        switches.set(switches.WARMING, "off")
        own_redis.stop()
        assert not switches.refresh()
        assert switches.percent(switches.WARMING) == 0.0


# -- settings ---------------------------------------------------------------------------------------


def test_settings_turn_switches_off_and_the_older_bools_are_their_settings():
    parsed = parse_settings({"SWITCHES": {"compression": False, "l1": 10}, "AUTHZ_CACHE": False})
    assert parsed.problems == ()
    with override_settings(VELRO_CACHE={"SWITCHES": {"compression": False, "l1": 10}, "AUTHZ_CACHE": False}):
        assert [(s.name, s.setting) for s in switches.all()] == [
            ("l1", 10.0), ("eviction_policy", 100.0), ("compression", 0.0), ("adaptive_ttl", 100.0),
            ("warming", 100.0), ("authz_cache", 0.0), ("read_your_writes", 100.0), ("view_reads", 100.0),
        ]
        switches.set(switches.AUTHZ_CACHE, "on")  # a runtime value overrides the setting
        assert switches.on(switches.AUTHZ_CACHE, 7)


def test_a_compression_setting_of_false_stores_uncompressed(make_cache, settings):
    settings.VELRO_CACHE = {**settings.VELRO_CACHE, "SWITCHES": {"compression": False}}
    cache = make_cache(options={"COMPRESS_MIN_BYTES": 64})
    cache.set("gen:1:meta", {"text": "velro " * 200})
    assert _stored_codec(cache, "gen:1:meta") not in _LZ4_CODECS


# -- velro_switch ----------------------------------------------------------------------------------


def test_velro_switch_sets_lists_and_clears(runtime):
    out = io.StringIO()
    call_command("velro_switch", "set", "compression", "25%", stdout=out)
    assert "compression: 25 %" in out.getvalue() and runtime.hget(switches.HASH_KEY, "compression") == b"25"
    out = io.StringIO()
    call_command("velro_switch", "list", "--json", stdout=out)
    listed = {row["name"]: row for row in json.loads(out.getvalue())["switches"]}
    assert listed["compression"]["runtime"] == 25.0 and listed["l1"]["runtime"] is None
    out = io.StringIO()
    call_command("velro_switch", "list", stdout=out)
    assert "compression" in out.getvalue() and "25 %" in out.getvalue()
    call_command("velro_switch", "clear", "compression", stdout=io.StringIO())
    assert runtime.hgetall(switches.HASH_KEY) == {}


def test_velro_switch_refuses_a_bad_value(runtime):
    from django.core.management import CommandError

    with pytest.raises(CommandError, match="not on, off or a percentage"):
        call_command("velro_switch", "set", "l1", "sometimes", stdout=io.StringIO())
    assert runtime.hgetall(switches.HASH_KEY) == {}
