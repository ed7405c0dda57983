"""TTL rules: per data type from settings, adapted to reads and changes, bounded, jittered."""

from __future__ import annotations

import itertools

import pytest
from django.test import override_settings

import velro_cache
from velro_cache.invalidation import registry
from velro_cache.ttl import (
    SKETCH_SLOTS,
    AccessSketch,
    base_ttl,
    effect_rows,
    effect_sums,
    record_change,
    record_read,
    reset_effect,
    sketch,
    subject_of,
    ttl_data_type,
    ttl_for,
    ttl_rules,
)

_ids = itertools.count(1)


@pytest.fixture(autouse=True)
def fresh_sketch():
    sketch.clear()
    reset_effect()
    yield
    sketch.clear()
    reset_effect()


@pytest.fixture(scope="module", autouse=True)
def adapt_level():
    """Keys ``adapt:<id>:...`` count their reads and changes under ``adapt:<id>``."""
    registry.declare_level("adapt:{id}")


def ttl_settings(**values):
    return override_settings(VELRO_CACHE={"TTL": {"adapt": 100}, **values})


def subject():
    return f"adapt:{next(_ids)}"


def test_base_ttl_per_data_type_from_the_spec_defaults():
    assert base_ttl("generation:1:meta") == 300
    assert base_ttl("gen:1:meta") == 300  # "gen" maps to generation
    assert base_ttl("auth:user:1:role:owner:gen:2:read") == 900
    assert base_ttl("session:token:abc") == 600
    assert base_ttl("team_membership:user:1") == 1200
    assert base_ttl("system_config:media.url_ttl_seconds") == 3600


def test_no_data_type_ttl_means_the_default_ttl():
    assert ttl_for("unknown:1") == 300  # VELRO_CACHE["DEFAULT_TTL"]
    assert ttl_for("ns:generation:1") == 300  # no data type TTL (tokens are stored with None, not by ttl_for)
    assert ttl_for("not a built key") == 300


def test_settings_override_ttls_and_map_key_parts_to_data_types():
    with override_settings(VELRO_CACHE={"TTL": {"generation": 60, "feed": 30}, "KEY_DATA_TYPES": {"f": "feed"}}):
        assert base_ttl("gen:1") == base_ttl("generation:1") == 60
        assert base_ttl("f:1") == base_ttl("feed:2") == 30
        assert base_ttl("session:1") == 600  # defaults still merged
    assert base_ttl("f:1") is None


def test_the_data_type_whose_ttl_applies():
    assert ttl_data_type("gen:1:meta") == ttl_data_type("generation:1") == "generation"
    assert ttl_data_type("unknown:1") is None
    with override_settings(VELRO_CACHE={"KEY_DATA_TYPES": {"fd": "feed"}}):
        assert ttl_data_type("fd:1") is None  # mapped, but "feed" has no TTL


def test_jitter_spreads_ttls_within_its_bounds():
    with ttl_settings(ADAPTIVE_TTL=False, TTL_JITTER=0.1):
        samples = [ttl_for("generation:1:meta") for _ in range(2000)]
    assert all(270 <= s <= 330 for s in samples)
    assert min(samples) < 280 and max(samples) > 320  # really spread, not clustered
    assert len(set(samples)) > 1900


def test_without_jitter_or_adaptation_the_ttl_is_the_setting():
    with ttl_settings(ADAPTIVE_TTL=False, TTL_JITTER=0):
        assert ttl_for("generation:1:meta") == 300


def test_hot_stable_keys_live_longer_up_to_the_max_factor():
    name = subject()
    with ttl_settings(TTL_JITTER=0):
        assert ttl_for(f"{name}:meta") == 100  # no history: the base
        for _ in range(8):
            record_read(f"{name}:meta")
        assert ttl_for(f"{name}:meta") == 200
        for _ in range(1000):
            record_read(f"{name}:meta")
        assert ttl_for(f"{name}:meta") == 400  # TTL_MAX_FACTOR 4


def test_often_changed_keys_live_shorter_down_to_the_min_factor():
    name = subject()
    with ttl_settings(TTL_JITTER=0):
        record_change(name)
        assert ttl_for(f"{name}:meta") == 50
        for _ in range(20):
            record_change(name)
        assert ttl_for(f"{name}:other") == 50  # TTL_MIN_FACTOR 0.5: every key under the namespace


def test_reads_earn_back_what_changes_cost():
    name = subject()
    with ttl_settings(TTL_JITTER=0):
        record_change(name)
        for _ in range(8):
            record_read(f"{name}:meta")
        assert ttl_for(f"{name}:meta") == 100


def test_configured_bounds_hold():
    hot, cold = subject(), subject()
    for _ in range(500):
        record_read(f"{hot}:x")
        record_change(cold)
    with ttl_settings(TTL_MIN_FACTOR=0.8, TTL_MAX_FACTOR=1.5, TTL_JITTER=0.1):
        assert all(100 * 1.5 * 0.9 <= ttl_for(f"{hot}:x") <= 100 * 1.5 * 1.1 for _ in range(200))
        assert all(100 * 0.8 * 0.9 <= ttl_for(f"{cold}:x") <= 100 * 0.8 * 1.1 for _ in range(200))


def test_what_adaptation_did_is_reported_per_data_type():
    """The effect per data type an operator sees (velro_stats, the dashboard): mean factor, mean TTL, how many kept longer or shorter."""
    hot, changed = subject(), subject()
    for _ in range(1000):
        record_read(f"{hot}:meta")
    record_change(changed)
    with ttl_settings(TTL_JITTER=0):
        for _ in range(3):
            ttl_for(f"{hot}:meta")  # x4
        ttl_for(f"{changed}:meta")  # x0.5
        ttl_for("generation:1:meta")  # no history: x1
        ttl_for("unknown:1")  # no data type TTL: not a data type's figure
        rows = {row["data_type"]: row for row in effect_rows(effect_sums())}
    assert set(rows) == {"adapt", "generation"}
    assert rows["adapt"] == {
        "data_type": "adapt", "base_seconds": 100, "ttls": 4, "mean_factor": (3 * 4 + 0.5) / 4,
        "mean_seconds": (3 * 400 + 50) / 4, "shortened": 1, "lengthened": 3,
    }  # fmt: skip
    assert rows["generation"]["mean_factor"] == 1.0 and rows["generation"]["shortened"] == rows["generation"]["lengthened"] == 0


def test_with_the_adaptive_ttl_switch_off_the_report_shows_the_table_as_given():
    hot = subject()
    for _ in range(1000):
        record_read(f"{hot}:meta")
    with ttl_settings(TTL_JITTER=0, SWITCHES={"adaptive_ttl": False}):
        assert ttl_for(f"{hot}:meta") == 100
        [row] = effect_rows(effect_sums())
    assert row["mean_factor"] == 1.0 and row["mean_seconds"] == 100 and row["lengthened"] == 0


@pytest.mark.django_db(transaction=True)  # the invalidation is applied on a real commit
def test_an_invalidation_counts_as_a_change():
    name = subject()
    with ttl_settings(TTL_JITTER=0):
        velro_cache.invalidate(prefixes=[name])
        assert ttl_for(f"{name}:meta") == 50


def test_reads_and_changes_are_counted_under_the_most_specific_namespace():
    assert subject_of("adapt:5:meta") == "adapt:5"
    assert subject_of("adapt:5:meta:@Tok12345.Tok67890") == "adapt:5"
    assert subject_of("undeclared:1:x") == "undeclared:1:x"
    assert subject_of("not a key") == "not a key"


def test_the_sketch_is_bounded_and_forgets():
    small = AccessSketch(slots=64, decay_every=10_000)
    for n in range(5000):
        small.record_read(f"k{n}")
    assert len(small.reads) == len(small.changes) == 128  # fixed memory, whatever the number of keys
    for _ in range(100):
        small.record_read("hot")
    reads, _ = small.counts("hot")
    small.decay()
    assert small.counts("hot")[0] == reads // 2
    assert len(sketch.reads) == 2 * SKETCH_SLOTS


# -- bad settings -------------------------------------------------------------------------------


def test_a_bad_ttl_setting_never_breaks_reads_while_unfixed():
    with override_settings(VELRO_CACHE={"TTL_JITTER": "lots", "TTL_MIN_FACTOR": -1}):
        assert 150 <= ttl_for("generation:1") <= 1320


def test_a_bad_ttl_entry_leaves_its_data_type_at_the_default():
    with override_settings(VELRO_CACHE={"TTL": {"generation": 0, "session": "10m", "feed": 30}}):
        assert base_ttl("generation:1") == 300
        assert base_ttl("session:1") == 600
        assert base_ttl("feed:1") == 30
    with override_settings(VELRO_CACHE={"TTL": [300]}):
        assert base_ttl("generation:1") == 300


def test_the_rules_are_the_parsed_settings_taken_once_per_change():
    with override_settings(VELRO_CACHE={"TTL_JITTER": "lots", "TTL_MIN_FACTOR": -1, "TTL_MAX_FACTOR": 2, "DEFAULT_TTL": 120}):
        rules = ttl_rules()
        assert rules is ttl_rules()
        assert (rules.jitter, rules.min_factor, rules.max_factor, rules.default_ttl) == (0.1, 0.5, 2, 120)
    assert ttl_rules() is not rules
    assert (ttl_rules().max_factor, ttl_rules().default_ttl) == (4.0, 300)
