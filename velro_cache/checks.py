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
