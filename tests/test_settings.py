"""VELRO_CACHE is parsed once per change into one immutable object; a bad value means its default."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from django.test import override_settings

from velro_cache.conf import DEFAULTS, SETTING_NAMES, VelroSettings, current_settings, parse_settings, settings
from velro_cache.options import L1_KEYS, TOP_KEYS

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("conf.py", "checks.py", "options.py")


def test_the_documented_defaults():
    assert dict(DEFAULTS.TTL) == {"authorization": 900, "session": 600, "generation": 300, "team_membership": 1200, "system_config": 3600}
    assert DEFAULTS.DEFAULT_TTL == 300
    assert DEFAULTS.KEY_DATA_TYPES["gen"] == "generation"
    assert (DEFAULTS.ADAPTIVE_TTL, DEFAULTS.TTL_MIN_FACTOR, DEFAULTS.TTL_MAX_FACTOR, DEFAULTS.TTL_JITTER) == (True, 0.5, 4.0, 0.1)
    assert (DEFAULTS.INVALIDATION, DEFAULTS.CACHE_ALIAS) == ((), "default")
    assert (DEFAULTS.VIEW_REFRESH_ON_WRITE, DEFAULTS.VIEW_REFRESH_DEBOUNCE, DEFAULTS.VIEW_REFRESH_PERIOD) == (True, 2.0, 300)
    assert (DEFAULTS.VIEW_REFRESH_SCHEDULE, DEFAULTS.VIEW_REFRESH_LOG_KEEP, DEFAULTS.AUTHZ_CACHE) == (False, 1000, True)
    assert parse_settings({}).problems == ()


GOOD = {
    "TTL": {"feed": 30},
    "DEFAULT_TTL": 60,
    "KEY_DATA_TYPES": {"fd": "feed"},
    "ADAPTIVE_TTL": False,
    "TTL_MIN_FACTOR": 1,
    "TTL_MAX_FACTOR": 2,
    "TTL_JITTER": 0,
    "INVALIDATION": ["studio.cache"],
    "CACHE_ALIAS": "l1only",
    "CAPTURE_WRITES": False,
    "LISTEN_EXTERNAL_WRITES": True,
    "VIEW_REFRESH_ON_WRITE": False,
    "VIEW_REFRESH_DEBOUNCE": 0,
    "VIEW_REFRESH_PERIOD": 1.5,
    "VIEW_REFRESH_SCHEDULE": True,
    "VIEW_REFRESH_LOG_KEEP": 10,
    "AUTHZ_CACHE": False,
    "AUTHZ_CONTEXTS": False,
    "AUTHZ_CONTEXT_MAX_ROWS": 50,
    "READ_YOUR_WRITES": False,
    "TELEMETRY_INTERVAL": 1,
    "TELEMETRY_RETENTION": 60,
    "SWITCHES": {"compression": False, "l1": 25, "warming": True},
    "ALERTS": {
        "HIT_RATE_BELOW": 0.9,
        "L1_P95_ABOVE": None,
        "L2_P95_ABOVE": 0.005,
        "BREAKER_OPEN": False,
        "VIEW_STALENESS_ABOVE": 600,
        "EVICTIONS_PER_MINUTE_ABOVE": 0,
        "WINDOW_MINUTES": 10,
    },
}


def test_every_setting_given_well_is_taken():
    assert set(GOOD) == set(SETTING_NAMES)
    parsed = parse_settings(GOOD)
    assert parsed.problems == ()
    assert parsed.TTL == {**DEFAULTS.TTL, "feed": 30}  # merged over the defaults
    assert parsed.KEY_DATA_TYPES == {**DEFAULTS.KEY_DATA_TYPES, "fd": "feed"}
    assert parsed.INVALIDATION == ("studio.cache",)
    for name in set(GOOD) - {"TTL", "KEY_DATA_TYPES", "INVALIDATION"}:
        assert getattr(parsed, name) == GOOD[name], name


@pytest.mark.parametrize(
    ("name", "value", "check_id"),
    [
        ("TTL", [300], "E010"),
        ("DEFAULT_TTL", -1, "E013"),
        ("DEFAULT_TTL", 1.5, "E013"),
        ("KEY_DATA_TYPES", ["gen"], "E020"),
        ("ADAPTIVE_TTL", "yes", "E021"),
        ("TTL_MIN_FACTOR", 2, "E022"),
        ("TTL_MAX_FACTOR", 0.5, "E022"),
        ("TTL_JITTER", 0.9, "E023"),
        ("INVALIDATION", "studio.cache", "E024"),
        ("CACHE_ALIAS", ["default"], "E026"),
        ("CAPTURE_WRITES", "on", "E028"),
        ("LISTEN_EXTERNAL_WRITES", 1, "E029"),
        ("VIEW_REFRESH_ON_WRITE", "on", "E030"),
        ("VIEW_REFRESH_SCHEDULE", 1, "E030"),
        ("VIEW_REFRESH_DEBOUNCE", -1, "E031"),
        ("VIEW_REFRESH_PERIOD", 0, "E032"),
        ("VIEW_REFRESH_LOG_KEEP", 0, "E033"),
        ("AUTHZ_CACHE", "yes", "E040"),
        ("AUTHZ_CONTEXTS", 1, "E090"),
        ("AUTHZ_CONTEXT_MAX_ROWS", 0, "E091"),
        ("TELEMETRY_INTERVAL", 0.01, "E070"),
        ("TELEMETRY_INTERVAL", "5", "E070"),
        ("TELEMETRY_RETENTION", 0, "E071"),
        ("ALERTS", ["HIT_RATE_BELOW"], "E072"),
        ("ALERTS", {"HIT_RATE": 0.9}, "E072"),
        ("ALERTS", {"HIT_RATE_BELOW": 95}, "E073"),
        ("ALERTS", {"BREAKER_OPEN": None}, "E073"),
        ("SWITCHES", ["l1"], "E080"),
        ("SWITCHES", {"l2": False}, "E081"),
        ("SWITCHES", {"l1": "off"}, "E082"),
        ("SWITCHES", {"l1": 101}, "E082"),
    ],
)
def test_a_bad_value_is_a_problem_and_its_default_applies(name, value, check_id):
    parsed = parse_settings({name: value})
    assert [p.id for p in parsed.problems] == [f"velro_cache.{check_id}"]
    assert getattr(parsed, name) == getattr(DEFAULTS, name)


def test_bad_entries_are_left_out_and_good_ones_kept():
    parsed = parse_settings(
        {
            "TTL": {"generation": 0, "feed": 30},
            "KEY_DATA_TYPES": {"g en": "generation", 3: "feed", "fd": "feed"},
            "INVALIDATION": ["studio.cache", 3, ""],
        }
    )
    assert parsed.TTL["generation"] == 300 and parsed.TTL["feed"] == 30
    assert "g en" not in parsed.KEY_DATA_TYPES and parsed.KEY_DATA_TYPES["fd"] == "feed"
    assert parsed.INVALIDATION == ("studio.cache",)
    assert sorted(p.id for p in parsed.problems) == ["velro_cache.E011", "velro_cache.E020", "velro_cache.E020", "velro_cache.E024"]


def test_a_value_that_is_not_a_dict_means_every_default():
    parsed = parse_settings(["TTL"])
    assert [p.id for p in parsed.problems] == ["velro_cache.E012"]
    assert all(getattr(parsed, name) == getattr(DEFAULTS, name) for name in SETTING_NAMES)


def test_unknown_keys_are_warned_about_and_ignored():
    parsed = parse_settings({"TTLS": {}, "TTL_JITTER": 0})
    assert [p.id for p in parsed.problems] == ["velro_cache.W002"]
    assert "'TTLS'" in parsed.problems[0].msg and parsed.TTL_JITTER == 0


def test_the_settings_object_is_immutable():
    parsed = parse_settings({"TTL": {"feed": 30}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.TTL_JITTER = 0.2  # type: ignore[misc]
    with pytest.raises(TypeError):
        parsed.TTL["feed"] = 60  # type: ignore[index]
    assert isinstance(parsed, VelroSettings)


def test_parsed_once_per_settings_change_and_read_through_one_object():
    before = current_settings()
    assert current_settings() is before  # no re-parse between changes
    with override_settings(VELRO_CACHE={"TTL": {"generation": 60}}):
        during = current_settings()
        assert during is not before and current_settings() is during
        assert settings.TTL["generation"] == 60 and settings.TTL["authorization"] == 900
        assert settings.TTL is during.TTL
    assert settings.TTL["generation"] == 300
    assert current_settings() is not during


# -- the settings reference documents everything ------------------------------------------------


def _reference() -> str:
    return (ROOT / "docs" / "settings.md").read_text()


def test_the_settings_reference_lists_every_setting_and_option():
    reference = _reference()
    for name in SETTING_NAMES:
        assert f"| `{name}`" in reference or f", `{name}`" in reference, name
    for name in TOP_KEYS:
        assert f'["{name}"]' in reference, name
    for name in L1_KEYS:
        assert f'["L1"]["{name}"]' in reference, name


def test_the_settings_reference_names_every_check_id():
    ids: set[str] = set()
    for source in SOURCES:
        text = (ROOT / "velro_cache" / source).read_text()
        ids |= set(re.findall(r"velro_cache\.([EW]0\d\d)", text))
        ids |= set(re.findall(r'_error\(\s*"([EW]0\d\d)"', text))
    assert len(ids) > 30
    reference = _reference()
    missing = sorted(check_id for check_id in ids if check_id not in reference)
    assert missing == []
