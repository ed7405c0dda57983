"""The one settings object for the app-level ``VELRO_CACHE`` dict.

``VELRO_CACHE`` is parsed once per settings change (``setting_changed``, so
``override_settings`` takes effect at once) into a frozen ``VelroSettings``: one
typed field per setting, plus the problems found. A bad value is left out and
its documented default applies until it is fixed, so a typo in settings never
breaks a read; the system checks (``velro_cache.checks``) report the problems.

Every module reads ``velro_cache.conf.settings`` (``settings.TTL``,
``settings.CACHE_ALIAS``, ...), which always answers from the latest parse;
none reads ``django.conf.settings.VELRO_CACHE`` itself. A cache's own
``OPTIONS`` are parsed by ``velro_cache.options`` instead.

Sections follow the concerns of the package: TTL and keys, invalidation,
materialized views (L3), authorization, coherence, telemetry, switches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, cast

from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from .keys import is_part
from .options import Problem

# -- defaults that are tables ---------------------------------------------------------------

# Seconds per data type (the product spec's defaults); yours are merged over them.
DATA_TYPE_TTLS: Mapping[str, int] = MappingProxyType(
    {
        "authorization": 900,
        "session": 600,
        "generation": 300,
        "team_membership": 1200,
        "system_config": 3600,
    }
)

# A key's first part -> the data type whose TTL applies (a first part that is
# itself a TTL name needs no entry). Yours are merged over these.
DEFAULT_KEY_DATA_TYPES: Mapping[str, str] = MappingProxyType(
    {
        "auth": "authorization",
        "authz": "authorization",
        "gen": "generation",
        "membership": "team_membership",
        "config": "system_config",
    }
)


# Alert thresholds; None switches one off (velro_cache.alerts).
DEFAULT_ALERTS: Mapping[str, Any] = MappingProxyType(
    {
        "HIT_RATE_BELOW": 0.8,  # fraction of reads, over the last minutes
        "L1_P95_ABOVE": 0.001,  # seconds
        "L2_P95_ABOVE": 0.02,  # seconds
        "BREAKER_OPEN": True,  # any worker's breaker not closed
        "VIEW_STALENESS_ABOVE": 3600,  # seconds since a view's last successful refresh started
        "EVICTIONS_PER_MINUTE_ABOVE": 10_000,
        "WINDOW_MINUTES": 5,  # minutes of history the rates are taken over
    }
)


@dataclass(frozen=True, eq=False)
class VelroSettings:
    """``VELRO_CACHE`` merged over the defaults; each field is one setting, valid by construction.

    Field names are the setting names, so ``settings.TTL`` reads like the dict.
    ``eq=False``: two parses are different objects, which lets derived values
    (``velro_cache.ttl.ttl_rules``) be cached per parse.
    """

    # -- TTL and keys (checks E010-E013, E020-E023, W020) --
    # Seconds per data type.
    TTL: Mapping[str, int] = field(default_factory=lambda: DATA_TYPE_TTLS)
    # Seconds for a key whose data type has no TTL.
    DEFAULT_TTL: int = 300
    # A key's first part -> its data type.
    KEY_DATA_TYPES: Mapping[str, str] = field(default_factory=lambda: DEFAULT_KEY_DATA_TYPES)
    # Hot, stable keys live longer and often-changed ones shorter, within
    # TTL x [TTL_MIN_FACTOR, TTL_MAX_FACTOR] (velro_cache.ttl).
    ADAPTIVE_TTL: bool = True
    TTL_MIN_FACTOR: float = 0.5
    TTL_MAX_FACTOR: float = 4.0
    # Each TTL is multiplied by a random 1 ± TTL_JITTER.
    TTL_JITTER: float = 0.1

    # -- invalidation (checks E024-E029) --
    # Modules to import at startup that declare model -> cached data
    # dependencies (velro_cache.invalidation.register).
    INVALIDATION: tuple[str, ...] = ()
    # Write capture (velro_cache.invalidation.capture): every statement on a
    # table that feeds cached data or decisions is seen. Off only to measure it.
    CAPTURE_WRITES: bool = True
    # Listen for writes made outside Django to tables migrated with
    # velro_cache.db.operations.CaptureWrites (PostgreSQL NOTIFY).
    LISTEN_EXTERNAL_WRITES: bool = False
    # The cache that cached reads and invalidations use.
    CACHE_ALIAS: str = "default"

    # -- materialized views, L3 (checks E030-E034, W030) --
    # Refresh a view after commits that write its declared sources.
    VIEW_REFRESH_ON_WRITE: bool = True
    # Seconds from the first write of a burst to its one refresh.
    VIEW_REFRESH_DEBOUNCE: float = 2.0
    # Seconds between refreshes of a view that declares no period; also the
    # TTL of cached reads of it.
    VIEW_REFRESH_PERIOD: float = 300
    # Refresh each registered view every period from a background thread of
    # the web process (cron `velro_refresh_views --stale` is the alternative).
    VIEW_REFRESH_SCHEDULE: bool = False
    # Refresh log rows kept per view (velro_cache.models.ViewRefresh).
    VIEW_REFRESH_LOG_KEEP: int = 1000

    # -- authorization (checks E040, W040, E041, E090, E091) --
    # Serve authorization decisions from the cache (versions read once per
    # request from Redis). False: every check is answered by the database.
    AUTHZ_CACHE: bool = True
    # Decide checks from each user's cached role context and the objects'
    # cached owner/team (velro_cache.authz.roles), so an object the user never
    # checked costs no query. False: per-(user, object) decisions only.
    AUTHZ_CONTEXTS: bool = True
    # Role-source rows (memberships, shares) a user's context holds at most;
    # beyond it that user's checks use per-object decisions.
    AUTHZ_CONTEXT_MAX_ROWS: int = 1000

    # -- coherence (check E051; a cache's STALENESS_BOUND is its OPTIONS', E050) --
    # At each request's start, confirm every L1 is current as of then (one
    # PING per cache with an L2; velro_cache.freshness).
    READ_YOUR_WRITES: bool = True

    # -- telemetry and alerts (checks E070-E073; velro_cache.telemetry, velro_cache.alerts) --
    # Seconds between a process's snapshots to Redis (0: no publisher thread).
    TELEMETRY_INTERVAL: float = 5.0
    # Minutes of per-minute samples kept in Redis.
    TELEMETRY_RETENTION: int = 1440
    # Alert thresholds (velro_cache.alerts.THRESHOLDS names them); yours are merged over these.
    ALERTS: Mapping[str, Any] = field(default_factory=lambda: DEFAULT_ALERTS)

    # -- switches (checks E080-E082; velro_cache.switches) --
    # Switch name -> True, False or the percentage (0-100) of users or keys it
    # is on for; a switch left out is on, except that ADAPTIVE_TTL, AUTHZ_CACHE
    # and READ_YOUR_WRITES above are the settings of their switches. A runtime
    # value in Redis overrides it.
    SWITCHES: Mapping[str, bool | float] = field(default_factory=lambda: MappingProxyType({}))

    # What was wrong with the given dict (reported by the system checks).
    problems: tuple[Problem, ...] = field(default=(), repr=False)


SETTING_NAMES = tuple(f.name for f in fields(VelroSettings) if f.name != "problems")

# The settings in force when VELRO_CACHE is empty: every documented default.
DEFAULTS = VelroSettings()


# -- value tests ------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _error(check_id: str, msg: str, hint: str | None = None) -> Problem:
    return Problem(f"velro_cache.{check_id}", "error", msg, hint)


def _checked(raw: dict[str, Any], name: str, valid: Callable[[Any], bool], problems: list[Problem], check_id: str, must: str) -> Any:
    """``raw[name]`` when given and valid; otherwise the default (a bad value is noted as a problem)."""
    if name not in raw:
        return getattr(DEFAULTS, name)
    value = raw[name]
    if valid(value):
        return value
    problems.append(_error(check_id, f"VELRO_CACHE[{name!r}] must be {must}, got {value!r}."))
    return getattr(DEFAULTS, name)


# -- TTL and keys -----------------------------------------------------------------------------


def _ttl_table(raw: dict[str, Any], problems: list[Problem]) -> Mapping[str, int]:
    """E010 / E011: the TTL table; a bad entry leaves its data type at its default (or without one)."""
    given = raw.get("TTL", {})
    if not isinstance(given, dict):
        problems.append(_error("E010", f"VELRO_CACHE['TTL'] must be a dict of data type -> seconds, got {type(given).__name__}."))
        given = {}
    table = dict(DATA_TYPE_TTLS)
    for name, seconds in given.items():
        if _is_positive_int(seconds):
            table[name] = seconds
        else:
            problems.append(_error("E011", f"VELRO_CACHE['TTL'][{name!r}] must be a positive integer number of seconds, got {seconds!r}."))
    return MappingProxyType(table)


def _key_data_types(raw: dict[str, Any], ttl: Mapping[str, int], problems: list[Problem]) -> Mapping[str, str]:
    """E020 / W020: key first part -> data type; entries that cannot work are left out."""
    given = raw.get("KEY_DATA_TYPES", {})
    if not isinstance(given, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in given.items()):
        problems.append(
            _error("E020", f"VELRO_CACHE['KEY_DATA_TYPES'] must be a dict of key part -> data type name (str -> str), got {given!r}.")
        )
        given = {k: v for k, v in given.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(given, dict) else {}
    mapping = dict(DEFAULT_KEY_DATA_TYPES)
    for segment, name in given.items():
        if not is_part(segment) or segment.startswith("#"):
            problems.append(
                _error(
                    "E020",
                    f"VELRO_CACHE['KEY_DATA_TYPES'] maps {segment!r}, which cannot be a key's first part (letters, digits, _ . - only).",
                )
            )
            continue
        if name not in ttl:
            problems.append(
                Problem(
                    "velro_cache.W020",
                    "warning",
                    f"VELRO_CACHE['KEY_DATA_TYPES'] maps {segment!r} to {name!r}, which has no entry in VELRO_CACHE['TTL'].",
                    hint="Keys of that data type live VELRO_CACHE['DEFAULT_TTL'] seconds; add a TTL for it.",
                )
            )
        mapping[segment] = name
    return MappingProxyType(mapping)


def _ttl_factors(raw: dict[str, Any], problems: list[Problem]) -> dict[str, float]:
    """E022: the bounds of the adaptive factor, each checked on its own so a good one is kept."""
    low = raw.get("TTL_MIN_FACTOR", DEFAULTS.TTL_MIN_FACTOR)
    high = raw.get("TTL_MAX_FACTOR", DEFAULTS.TTL_MAX_FACTOR)
    low_ok = _is_number(low) and 0 < low <= 1
    high_ok = _is_number(high) and high >= 1
    if not (low_ok and high_ok):
        problems.append(
            _error(
                "E022",
                f"VELRO_CACHE['TTL_MIN_FACTOR'] and ['TTL_MAX_FACTOR'] must be numbers with 0 < min <= 1 <= max, got {low!r} and {high!r}.",
                hint="They bound the adaptive TTL: data-type TTL x factor.",
            )
        )
    return {
        "TTL_MIN_FACTOR": low if low_ok else DEFAULTS.TTL_MIN_FACTOR,
        "TTL_MAX_FACTOR": high if high_ok else DEFAULTS.TTL_MAX_FACTOR,
    }


def _ttl_and_key_settings(raw: dict[str, Any], problems: list[Problem]) -> dict[str, Any]:
    ttl = _ttl_table(raw, problems)
    return {
        "TTL": ttl,
        "DEFAULT_TTL": _checked(raw, "DEFAULT_TTL", _is_positive_int, problems, "E013", "a positive integer"),
        "KEY_DATA_TYPES": _key_data_types(raw, ttl, problems),
        "ADAPTIVE_TTL": _checked(raw, "ADAPTIVE_TTL", lambda v: isinstance(v, bool), problems, "E021", "True or False"),
        **_ttl_factors(raw, problems),
        "TTL_JITTER": _checked(
            raw, "TTL_JITTER", lambda v: _is_number(v) and 0 <= v <= 0.5, problems, "E023", "a fraction between 0 and 0.5"
        ),
    }


# -- invalidation -----------------------------------------------------------------------------


def _invalidation_settings(raw: dict[str, Any], problems: list[Problem]) -> dict[str, Any]:
    """E024 (modules that are not dotted paths are left out), E026 (an alias that is not a name),
    E028/E029 (CAPTURE_WRITES / LISTEN_EXTERNAL_WRITES not a bool).

    Whether the modules exist and the alias is in CACHES is checked against the
    project by ``velro_cache.checks`` (E025, E026), not here.
    """
    modules = raw.get("INVALIDATION", [])
    if not isinstance(modules, (list, tuple)) or not all(isinstance(name, str) and name for name in modules):
        problems.append(_error("E024", f"VELRO_CACHE['INVALIDATION'] must be a list of dotted module paths, got {modules!r}."))
        modules = [name for name in modules if isinstance(name, str) and name] if isinstance(modules, (list, tuple)) else []
    alias = raw.get("CACHE_ALIAS", DEFAULTS.CACHE_ALIAS)
    if not isinstance(alias, str):
        problems.append(_error("E026", f"VELRO_CACHE['CACHE_ALIAS'] must be the name of a cache in CACHES, got {alias!r}."))
        alias = DEFAULTS.CACHE_ALIAS
    capture = _checked(raw, "CAPTURE_WRITES", lambda v: isinstance(v, bool), problems, "E028", "True or False")
    listen = _checked(raw, "LISTEN_EXTERNAL_WRITES", lambda v: isinstance(v, bool), problems, "E029", "True or False")
    return {"INVALIDATION": tuple(modules), "CACHE_ALIAS": alias, "CAPTURE_WRITES": capture, "LISTEN_EXTERNAL_WRITES": listen}


# -- materialized views (L3) ----------------------------------------------------------------


def _view_settings(raw: dict[str, Any], problems: list[Problem]) -> dict[str, Any]:
    def is_bool(value: Any) -> bool:
        return isinstance(value, bool)

    return {
        "VIEW_REFRESH_ON_WRITE": _checked(raw, "VIEW_REFRESH_ON_WRITE", is_bool, problems, "E030", "True or False"),
        "VIEW_REFRESH_SCHEDULE": _checked(raw, "VIEW_REFRESH_SCHEDULE", is_bool, problems, "E030", "True or False"),
        "VIEW_REFRESH_DEBOUNCE": _checked(
            raw, "VIEW_REFRESH_DEBOUNCE", lambda v: _is_number(v) and v >= 0, problems, "E031", "a number of seconds >= 0"
        ),
        "VIEW_REFRESH_PERIOD": _checked(
            raw, "VIEW_REFRESH_PERIOD", lambda v: _is_number(v) and v > 0, problems, "E032", "a positive number of seconds"
        ),
        "VIEW_REFRESH_LOG_KEEP": _checked(raw, "VIEW_REFRESH_LOG_KEEP", _is_positive_int, problems, "E033", "a positive integer"),
    }


# -- authorization ------------------------------------------------------------------------------


def _authz_settings(raw: dict[str, Any], problems: list[Problem]) -> dict[str, Any]:
    return {
        "AUTHZ_CACHE": _checked(raw, "AUTHZ_CACHE", lambda v: isinstance(v, bool), problems, "E040", "True or False"),
        "AUTHZ_CONTEXTS": _checked(raw, "AUTHZ_CONTEXTS", lambda v: isinstance(v, bool), problems, "E090", "True or False"),
        "AUTHZ_CONTEXT_MAX_ROWS": _checked(raw, "AUTHZ_CONTEXT_MAX_ROWS", _is_positive_int, problems, "E091", "a positive integer"),
    }


# -- coherence ----------------------------------------------------------------------------------


def _coherence_settings(raw: dict[str, Any], problems: list[Problem]) -> dict[str, Any]:
    return {"READ_YOUR_WRITES": _checked(raw, "READ_YOUR_WRITES", lambda v: isinstance(v, bool), problems, "E051", "True or False")}


# -- telemetry and alerts ------------------------------------------------------------------------

_ALERT_RULES: Mapping[str, tuple[Callable[[Any], bool], str]] = MappingProxyType(
    {
        "HIT_RATE_BELOW": (lambda v: _is_number(v) and 0 <= v <= 1, "a fraction between 0 and 1, or None"),
        "L1_P95_ABOVE": (lambda v: _is_number(v) and v > 0, "a positive number of seconds, or None"),
        "L2_P95_ABOVE": (lambda v: _is_number(v) and v > 0, "a positive number of seconds, or None"),
        "BREAKER_OPEN": (lambda v: isinstance(v, bool), "True or False"),
        "VIEW_STALENESS_ABOVE": (lambda v: _is_number(v) and v > 0, "a positive number of seconds, or None"),
        "EVICTIONS_PER_MINUTE_ABOVE": (lambda v: _is_number(v) and v >= 0, "a number >= 0, or None"),
        "WINDOW_MINUTES": (lambda v: _is_positive_int(v) and v <= 60, "a whole number of minutes from 1 to 60"),
    }
)


def _alert_thresholds(raw: dict[str, Any], problems: list[Problem]) -> Mapping[str, Any]:
    """E072 (not a dict, or an unknown threshold) / E073 (a bad value): bad entries keep their defaults."""
    given = raw.get("ALERTS", {})
    if not isinstance(given, dict):
        problems.append(_error("E072", f"VELRO_CACHE['ALERTS'] must be a dict of threshold -> value, got {type(given).__name__}."))
        return DEFAULT_ALERTS
    merged = dict(DEFAULT_ALERTS)
    for name, value in given.items():
        rule = _ALERT_RULES.get(name)
        if rule is None:
            problems.append(
                _error("E072", f"VELRO_CACHE['ALERTS'] has an unknown threshold {name!r}.", hint=f"Known: {', '.join(_ALERT_RULES)}.")
            )
        elif value is None and name not in ("BREAKER_OPEN", "WINDOW_MINUTES"):
            merged[name] = None
        elif not rule[0](value):
            problems.append(_error("E073", f"VELRO_CACHE['ALERTS'][{name!r}] must be {rule[1]}, got {value!r}."))
        else:
            merged[name] = value
    return MappingProxyType(merged)


def _telemetry_settings(raw: dict[str, Any], problems: list[Problem]) -> dict[str, Any]:
    return {
        "TELEMETRY_INTERVAL": _checked(
            raw, "TELEMETRY_INTERVAL", lambda v: _is_number(v) and (v == 0 or 0.1 <= v <= 300), problems, "E070",
            "0 (off) or a number of seconds from 0.1 to 300",
        ),
        "TELEMETRY_RETENTION": _checked(
            raw, "TELEMETRY_RETENTION", lambda v: _is_positive_int(v) and v <= 10_080, problems, "E071",
            "a whole number of minutes from 1 to 10080 (a week)",
        ),
        "ALERTS": _alert_thresholds(raw, problems),
    }


# -- switches ----------------------------------------------------------------------------------


def _switch_value(value: Any) -> bool:
    """True, False, or a number from 0 to 100 (the percentage of users or keys a switch is on for)."""
    return isinstance(value, bool) or (_is_number(value) and 0 <= value <= 100)


def _switch_settings(raw: dict[str, Any], problems: list[Problem]) -> dict[str, Any]:
    """E080 (SWITCHES not a dict), E081 (an unknown switch), E082 (a value that is not a bool or a percentage).

    Only valid entries are kept; ``velro_cache.switches`` turns them into
    percentages, with a switch left out taking its older bool setting
    (ADAPTIVE_TTL, ...) or else being on. The names come from its registry
    (imported here, at parse time, since it imports this module).
    """
    from .switches import REGISTRY

    given = raw.get("SWITCHES", {})
    if not isinstance(given, dict):
        problems.append(
            _error("E080", f"VELRO_CACHE['SWITCHES'] must be a dict of switch name -> True, False or 0-100, got {type(given).__name__}.")
        )
        given = {}
    table = {}
    for name, value in given.items():
        if name not in REGISTRY:
            problems.append(
                _error("E081", f"VELRO_CACHE['SWITCHES'] names an unknown switch {name!r}.", hint=f"Known: {', '.join(REGISTRY)}.")
            )
        elif not _switch_value(value):
            problems.append(
                _error("E082", f"VELRO_CACHE['SWITCHES'][{name!r}] must be True, False or a percentage from 0 to 100, got {value!r}.")
            )
        else:
            table[name] = value
    return {"SWITCHES": MappingProxyType(table)}


# -- the parse ----------------------------------------------------------------------------------


def parse_settings(raw: Any) -> VelroSettings:
    """``VELRO_CACHE`` as given -> the settings in force and every problem with it (E012, W002, ...)."""
    if not isinstance(raw, dict):
        return VelroSettings(problems=(_error("E012", f"VELRO_CACHE must be a dict, got {type(raw).__name__}."),))
    problems = [
        Problem(
            "velro_cache.W002",
            "warning",
            f"Unknown VELRO_CACHE key {name!r} is ignored.",
            hint=f"Known keys: {', '.join(sorted(SETTING_NAMES))}.",
        )
        for name in sorted(set(raw) - set(SETTING_NAMES), key=str)
    ]
    values: dict[str, Any] = {}
    for concern in (
        _ttl_and_key_settings, _invalidation_settings, _view_settings, _authz_settings, _coherence_settings, _telemetry_settings,
        _switch_settings,
    ):
        values.update(concern(raw, problems))
    return VelroSettings(problems=tuple(problems), **values)


_parsed: VelroSettings | None = None


def current_settings() -> VelroSettings:
    """The parse of the ``VELRO_CACHE`` in force, made on first use after each change."""
    global _parsed
    parsed = _parsed
    if parsed is None:
        parsed = _parsed = parse_settings(getattr(django_settings, "VELRO_CACHE", {}))
    return parsed


@receiver(setting_changed)
def _reparse_on_change(setting: str, **kwargs: Any) -> None:
    global _parsed
    if setting == "VELRO_CACHE":
        _parsed = None


class _LatestSettings:
    """Forwards attribute reads to ``current_settings()``.

    Modules bind ``settings`` at import time; forwarding lets them see every
    later parse without re-importing.
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        return getattr(current_settings(), name)

    def __repr__(self) -> str:
        return repr(current_settings())


settings = cast(VelroSettings, _LatestSettings())
