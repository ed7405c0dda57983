"""System checks: misconfiguration is reported before the site serves a request.

Checks only report. The problems of a cache's ``OPTIONS`` come from
``velro_cache.options.parse_options`` and those of ``VELRO_CACHE`` from the
one parse in ``velro_cache.conf``; what is checked here beyond them relates
the parsed settings to the rest of the project (``CACHES``, ``MIDDLEWARE``,
importable modules, models). One section per concern: cache options, app
settings as a whole, TTL and keys, invalidation, materialized views (L3),
authorization.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from .conf import VelroSettings, current_settings
from .options import BACKEND_PATH, Problem, tiered_caches


def _message(problem: Problem, prefix: str = "") -> CheckMessage:
    kind = Error if problem.level == "error" else Warning
    return kind(f"{prefix}{problem.msg}", hint=problem.hint, id=problem.id)


def _settings_problems(parsed: VelroSettings, numbers: Iterable[str]) -> list[CheckMessage]:
    """The parse's problems whose id is one of ``numbers`` (``"E010"``, ...): one concern's share."""
    ids = {f"velro_cache.{number}" for number in numbers}
    return [_message(problem) for problem in parsed.problems if problem.id in ids]


# -- cache options (E001-E009, E014-E019, E060-E063) -------------------------------------------------


@register(Tags.caches)
def check_tiered_caches(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Every CACHES entry that uses TieredCache must have valid LOCATION and OPTIONS."""
    messages: list[CheckMessage] = []
    for alias, parsed in tiered_caches().items():
        messages.extend(_message(problem, f"CACHES[{alias!r}]: ") for problem in parsed.problems)
    return messages


# -- VELRO_CACHE as a whole (E012, W002) ---------------------------------------------------------


@register()
def check_app_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """VELRO_CACHE must be a dict with known keys."""
    return _settings_problems(current_settings(), ("E012", "W002"))


# -- TTL and keys (E010, E011, E013, E020-E023, W020) --------------------------------------------


@register()
def check_ttl_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """TTLs, key data types and the adaptive TTL bounds must be usable before the first read."""
    return _settings_problems(current_settings(), ("E010", "E011", "E013", "E020", "E021", "E022", "E023", "W020"))


# -- invalidation (E024-E029; E028/E029 come from the settings parse) -----------------------------------------


@register()
def check_invalidation_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The declaration modules must exist and the cache alias must be in CACHES."""
    from .invalidation import missing_modules

    parsed = current_settings()
    messages = _settings_problems(parsed, ("E024", "E026"))
    messages += [
        Error(f"VELRO_CACHE['INVALIDATION'] names {name!r}, which cannot be imported.", id="velro_cache.E025")
        for name in missing_modules()
    ]
    if parsed.CACHE_ALIAS not in getattr(django_settings, "CACHES", {}):
        messages.append(Error(f"VELRO_CACHE['CACHE_ALIAS'] is {parsed.CACHE_ALIAS!r}, which is not in CACHES.", id="velro_cache.E026"))
    return messages


@register(Tags.models)
def check_cache_declarations(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Every {name} in a declaration must resolve on its model (E027)."""
    from .invalidation import registry

    return _model_problems(registry.declarations(), "velro_cache.E027")


def _model_problems(registered: Iterable[Any], error_id: str) -> list[CheckMessage]:
    """One error per problem of each registered declaration or policy, reported on its model."""
    return [Error(problem, obj=item.model, id=error_id) for item in registered for problem in item.problems()]


# -- materialized views, L3 (E030-E034, W030) --------------------------------------------------------


@register()
def check_view_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The refresh settings of materialized views must be usable before a write triggers one."""
    return _settings_problems(current_settings(), ("E030", "E031", "E032", "E033"))


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


# -- authorization (E040, W040, E041, E090, E091) --------------------------------------------------------------

AUTHZ_MIDDLEWARE = "velro_cache.authz.middleware.AuthorizationMiddleware"


def authz_setting_problems(parsed: VelroSettings, caches: dict[str, Any], middleware: list[str]) -> list[CheckMessage]:
    """E040: AUTHZ_CACHE is not a bool; E090/E091: bad AUTHZ_CONTEXTS/AUTHZ_CONTEXT_MAX_ROWS;
    W040: decisions could never be cached with this cache."""
    messages = _settings_problems(parsed, ("E040", "E090", "E091"))
    backend = caches.get(parsed.CACHE_ALIAS, {}).get("BACKEND")
    given_as_bool = not _settings_problems(parsed, ("E040",))  # a bad AUTHZ_CACHE is E040's to report, not W040's
    if given_as_bool and parsed.AUTHZ_CACHE and AUTHZ_MIDDLEWARE in middleware and backend and backend != BACKEND_PATH:
        messages.append(
            Warning(
                f"CACHES[{parsed.CACHE_ALIAS!r}] uses {backend}, which cannot read authorization versions authoritatively: "
                "every authorization check will query the database.",
                hint=f"Use {BACKEND_PATH} for the cache VELRO_CACHE['CACHE_ALIAS'] names, or set AUTHZ_CACHE to False.",
                id="velro_cache.W040",
            )
        )
    return messages


@register()
def check_authz_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Authorization caching must be a bool and, when on, able to work with the configured cache."""
    return authz_setting_problems(
        current_settings(), getattr(django_settings, "CACHES", {}), list(getattr(django_settings, "MIDDLEWARE", []))
    )


@register(Tags.models)
def check_authz_policies(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E041: a registered policy names a field its model (or a role source's model) does not have."""
    from .authz.policy import registry

    return _model_problems(registry.policies(), "velro_cache.E041")


# -- coherence (E051; a cache's E050 comes with its options) ------------------------------------


@register()
def check_coherence_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E051: READ_YOUR_WRITES is not a bool."""
    return _settings_problems(current_settings(), ("E051",))


# -- telemetry and alerts (E070-E073) -----------------------------------------------------------


@register()
def check_telemetry_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E070/E071: TELEMETRY_INTERVAL / TELEMETRY_RETENTION out of range; E072/E073: ALERTS malformed or a bad threshold."""
    return _settings_problems(current_settings(), ("E070", "E071", "E072", "E073"))


# -- switches (E080-E082) --------------------------------------------------------------------------


@register()
def check_switch_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E080: SWITCHES not a dict; E081: an unknown switch; E082: a value that is not True, False or 0-100."""
    return _settings_problems(current_settings(), ("E080", "E081", "E082"))
