"""System checks: misconfiguration is reported before the site serves a request."""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from .conf import DEFAULTS
from .options import parse_options

BACKEND_PATH = "velro_cache.backends.TieredCache"


def _message(problem: Any, obj: str) -> CheckMessage:
    kind = Error if problem.level == "error" else Warning
    return kind(f"CACHES[{obj!r}]: {problem.msg}", hint=problem.hint, id=problem.id)


@register(Tags.caches)
def check_tiered_caches(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Every CACHES entry that uses TieredCache must have valid LOCATION and OPTIONS."""
    messages: list[CheckMessage] = []
    for alias, config in getattr(django_settings, "CACHES", {}).items():
        if config.get("BACKEND") != BACKEND_PATH:
            continue
        parsed = parse_options(config.get("LOCATION"), config.get("OPTIONS"))
        messages.extend(_message(problem, alias) for problem in parsed.problems)
    return messages


def _ttl_problems(ttl: Any) -> list[CheckMessage]:
    if not isinstance(ttl, dict):
        return [Error(f"VELRO_CACHE['TTL'] must be a dict of data type -> seconds, got {type(ttl).__name__}.", id="velro_cache.E010")]
    return [
        Error(
            f"VELRO_CACHE['TTL'][{name!r}] must be a positive integer number of seconds, got {seconds!r}.",
            id="velro_cache.E011",
        )
        for name, seconds in ttl.items()
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds <= 0
    ]


@register()
def check_app_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """VELRO_CACHE must be a dict with known keys and sane values."""
    value = getattr(django_settings, "VELRO_CACHE", {})
    if not isinstance(value, dict):
        return [Error(f"VELRO_CACHE must be a dict, got {type(value).__name__}.", id="velro_cache.E012")]
    messages: list[CheckMessage] = [
        Warning(f"Unknown VELRO_CACHE key {name!r} is ignored.", hint=f"Known keys: {', '.join(sorted(DEFAULTS))}.", id="velro_cache.W002")
        for name in sorted(set(value) - set(DEFAULTS))
    ]
    if "TTL" in value:
        messages.extend(_ttl_problems(value["TTL"]))
    default_ttl = value.get("DEFAULT_TTL", DEFAULTS["DEFAULT_TTL"])
    if isinstance(default_ttl, bool) or not isinstance(default_ttl, int) or default_ttl <= 0:
        messages.append(Error(f"VELRO_CACHE['DEFAULT_TTL'] must be a positive integer, got {default_ttl!r}.", id="velro_cache.E013"))
    return messages


# --- Materialized views (L3): settings and models (issue 6; ids E030-E039, W030-W039) ---


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _view_setting_problems(value: dict[str, Any]) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    for name in ("VIEW_REFRESH_ON_WRITE", "VIEW_REFRESH_SCHEDULE"):
        if name in value and not isinstance(value[name], bool):
            messages.append(Error(f"VELRO_CACHE[{name!r}] must be True or False, got {value[name]!r}.", id="velro_cache.E030"))
    debounce = value.get("VIEW_REFRESH_DEBOUNCE", 0)
    if not _is_number(debounce) or debounce < 0:
        messages.append(Error(f"VELRO_CACHE['VIEW_REFRESH_DEBOUNCE'] must be a number of seconds >= 0, got {debounce!r}.", id="velro_cache.E031"))
    period = value.get("VIEW_REFRESH_PERIOD", 1)
    if not _is_number(period) or period <= 0:
        messages.append(Error(f"VELRO_CACHE['VIEW_REFRESH_PERIOD'] must be a positive number of seconds, got {period!r}.", id="velro_cache.E032"))
    keep = value.get("VIEW_REFRESH_LOG_KEEP", 1)
    if isinstance(keep, bool) or not isinstance(keep, int) or keep <= 0:
        messages.append(Error(f"VELRO_CACHE['VIEW_REFRESH_LOG_KEEP'] must be a positive integer, got {keep!r}.", id="velro_cache.E033"))
    return messages


@register()
def check_view_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The refresh settings of materialized views must be usable before a write triggers one."""
    value = getattr(django_settings, "VELRO_CACHE", {})
    return _view_setting_problems(value) if isinstance(value, dict) else []


@register(Tags.models)
def check_materialized_view_models(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """A MaterializedView model must be unmanaged, and only on databases that have views."""
    from django.apps import apps
    from django.db import connections

    from .db.models import MaterializedView

    models = [m for m in apps.get_models() if issubclass(m, MaterializedView) and not m._meta.abstract]
    return materialized_view_model_problems(models, {alias: connections[alias].vendor for alias in connections})


def materialized_view_model_problems(models: list[Any], vendors: dict[str, str]) -> list[CheckMessage]:
    """E034 / W030 for these models, given each database alias's vendor."""
    from django.db import router

    from .db.sql import SUPPORTED_VENDORS

    messages: list[CheckMessage] = [
        Error(
            f"{model._meta.label} is a MaterializedView but has Meta.managed = True: Django would "
            f"create and flush a table named like its view.",
            hint="Remove managed = True (MaterializedView models are unmanaged).",
            obj=model,
            id="velro_cache.E034",
        )
        for model in models
        if model._meta.managed
    ]
    for alias, vendor in vendors.items():
        if vendor in SUPPORTED_VENDORS:
            continue
        messages.extend(
            Warning(
                f"{model._meta.label} reads a materialized view, but database {alias!r} is {vendor}: "
                f"materialized views exist on PostgreSQL and (emulated) on SQLite only.",
                hint="Route the view's app away from this database, or migrating it will fail.",
                obj=model,
                id="velro_cache.W030",
            )
            for model in models
            if router.allow_migrate_model(alias, model)
        )
    return messages


# --- end materialized views ---


# --- Keys, TTL policy and invalidation (issue 4; ids E020-E029, W020-W029) ---


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _key_data_type_problems(value: dict[str, Any]) -> list[CheckMessage]:
    from .keys import is_part

    mapping = value.get("KEY_DATA_TYPES", {})
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        return [Error(f"VELRO_CACHE['KEY_DATA_TYPES'] must be a dict of key part -> data type name (str -> str), got {mapping!r}.", id="velro_cache.E020")]
    messages: list[CheckMessage] = [
        Error(f"VELRO_CACHE['KEY_DATA_TYPES'] maps {segment!r}, which cannot be a key's first part (letters, digits, _ . - only).", id="velro_cache.E020")
        for segment in mapping
        if not is_part(segment) or segment.startswith("#")
    ]
    ttl = value.get("TTL", {})
    known = {**DEFAULTS["TTL"], **(ttl if isinstance(ttl, dict) else {})}
    messages += [
        Warning(
            f"VELRO_CACHE['KEY_DATA_TYPES'] maps {segment!r} to {name!r}, which has no entry in VELRO_CACHE['TTL'].",
            hint="Keys of that data type get the cache's default timeout; add a TTL for it.",
            id="velro_cache.W020",
        )
        for segment, name in mapping.items()
        if name not in known
    ]
    return messages


def _ttl_policy_problems(value: dict[str, Any]) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    if not isinstance(value.get("ADAPTIVE_TTL", True), bool):
        messages.append(Error(f"VELRO_CACHE['ADAPTIVE_TTL'] must be True or False, got {value['ADAPTIVE_TTL']!r}.", id="velro_cache.E021"))
    low = value.get("TTL_MIN_FACTOR", DEFAULTS["TTL_MIN_FACTOR"])
    high = value.get("TTL_MAX_FACTOR", DEFAULTS["TTL_MAX_FACTOR"])
    if not (_is_real(low) and _is_real(high) and 0 < low <= 1 <= high):
        messages.append(Error(
            f"VELRO_CACHE['TTL_MIN_FACTOR'] and ['TTL_MAX_FACTOR'] must be numbers with 0 < min <= 1 <= max, got {low!r} and {high!r}.",
            hint="They bound the adaptive TTL: data-type TTL x factor.",
            id="velro_cache.E022",
        ))
    jitter = value.get("TTL_JITTER", DEFAULTS["TTL_JITTER"])
    if not (_is_real(jitter) and 0 <= jitter <= 0.5):
        messages.append(Error(f"VELRO_CACHE['TTL_JITTER'] must be a fraction between 0 and 0.5, got {jitter!r}.", id="velro_cache.E023"))
    return messages


def _invalidation_problems(value: dict[str, Any]) -> list[CheckMessage]:
    modules = value.get("INVALIDATION", [])
    if not isinstance(modules, (list, tuple)) or not all(isinstance(name, str) and name for name in modules):
        return [Error(f"VELRO_CACHE['INVALIDATION'] must be a list of dotted module paths, got {modules!r}.", id="velro_cache.E024")]
    from .invalidation import missing_modules

    messages: list[CheckMessage] = [
        Error(f"VELRO_CACHE['INVALIDATION'] names {name!r}, which cannot be imported.", id="velro_cache.E025")
        for name in missing_modules()
    ]
    alias = value.get("CACHE_ALIAS", DEFAULTS["CACHE_ALIAS"])
    if alias not in getattr(django_settings, "CACHES", {}):
        messages.append(Error(f"VELRO_CACHE['CACHE_ALIAS'] is {alias!r}, which is not in CACHES.", id="velro_cache.E026"))
    return messages


@register()
def check_invalidation_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Key data types, the TTL policy and the declaration modules must be usable before serving."""
    value = getattr(django_settings, "VELRO_CACHE", {})
    if not isinstance(value, dict):
        return []
    return _key_data_type_problems(value) + _ttl_policy_problems(value) + _invalidation_problems(value)


@register(Tags.models)
def check_cache_declarations(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Every {name} in a declaration must resolve on its model (E027)."""
    from .invalidation import registry

    return [
        Error(problem, obj=declaration.model, id="velro_cache.E027")
        for declaration in registry.declarations()
        for problem in declaration.problems()
    ]


# --- end keys, TTL policy and invalidation ---

# --- Authorization (issue 5; E040-E049 / W040-W049) ---

AUTHZ_MIDDLEWARE = "velro_cache.authz.middleware.AuthorizationMiddleware"


def authz_setting_problems(value: dict[str, Any], caches: dict[str, Any], middleware: list[str]) -> list[CheckMessage]:
    """E040: AUTHZ_CACHE is not a bool; W040: decisions could never be cached with this cache."""
    messages: list[CheckMessage] = []
    enabled = value.get("AUTHZ_CACHE", DEFAULTS["AUTHZ_CACHE"])
    if not isinstance(enabled, bool):
        messages.append(Error(f"VELRO_CACHE['AUTHZ_CACHE'] must be True or False, got {enabled!r}.", id="velro_cache.E040"))
    alias = value.get("CACHE_ALIAS", DEFAULTS["CACHE_ALIAS"])
    backend = caches.get(alias, {}).get("BACKEND")
    if enabled is True and AUTHZ_MIDDLEWARE in middleware and backend and backend != BACKEND_PATH:
        messages.append(Warning(
            f"CACHES[{alias!r}] uses {backend}, which cannot read authorization versions authoritatively: "
            "every authorization check will query the database.",
            hint=f"Use {BACKEND_PATH} for the cache VELRO_CACHE['CACHE_ALIAS'] names, or set AUTHZ_CACHE to False.",
            id="velro_cache.W040",
        ))
    return messages


@register()
def check_authz_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    value = getattr(django_settings, "VELRO_CACHE", {})
    if not isinstance(value, dict):
        return []
    return authz_setting_problems(value, getattr(django_settings, "CACHES", {}), list(getattr(django_settings, "MIDDLEWARE", [])))


@register(Tags.models)
def check_authz_policies(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E041: a registered policy names a field its model (or a role source's model) does not have."""
    from .authz.policy import registry

    return [
        Error(problem, obj=policy.model, id="velro_cache.E041")
        for policy in registry.policies()
        for problem in policy.problems()
    ]


# --- end authorization ---
