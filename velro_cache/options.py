"""Parse and validate a TieredCache's ``OPTIONS`` in one place.

The backend raises ``ImproperlyConfigured`` with these messages and the system
checks report the same problems with ids, so a bad setting reads the same
wherever it surfaces.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

MIB = 1024 * 1024
DEFAULT_L1_MAX_BYTES = 300 * MIB

REDIS_SCHEMES = ("redis", "rediss", "unix")
BACKEND_PATH = "velro_cache.backends.TieredCache"  # how a CACHES entry names this backend

L1_KEYS = {"MAX_BYTES", "MAX_AGE"}
TOP_KEYS = {
    "L1",
    "PICKLE_FALLBACK",
    "COMPRESS_MIN_BYTES",
    "POOL_SIZE",
    "SOCKET_TIMEOUT",
    "SOCKET_CONNECT_TIMEOUT",
    "POOL_TIMEOUT",
    "SIGNING_KEY",
    "SIGNING_KEY_FALLBACKS",
    "LEASE_TIMEOUT",
    "LEASE_WAIT",
    "EARLY_REFRESH_BETA",
    "CLUSTER",
    "STALENESS_BOUND",
    "SENTINELS",
    "SENTINEL_KWARGS",
}
SENTINEL_HINT = (
    "For Redis Sentinel, name the master's service in LOCATION and list the sentinels in OPTIONS, as django-redis does: "
    "LOCATION redis://mymaster/0 with OPTIONS['SENTINELS'] = [(host, port), ...]."
)
# What SENTINEL_KWARGS may set on the connections to the sentinels themselves.
SENTINEL_KWARG_NAMES = {"username", "password", "ssl", "socket_timeout", "socket_connect_timeout"}


@dataclass(frozen=True)
class Problem:
    """One configuration problem, of a cache's OPTIONS or of VELRO_CACHE (``velro_cache.conf``).

    ``level`` is "error" or "warning"; the system checks turn it into a
    message with this ``id``.
    """

    id: str
    level: str
    msg: str
    hint: str | None = None


@dataclass(frozen=True)
class TieredOptions:
    """The validated options of one TieredCache; defaults are the documented ones."""

    redis_urls: tuple[str, ...] = ()
    cluster: bool = False  # redis_urls are a Redis Cluster's startup nodes
    # With sentinels, redis_urls[0] names the master by its Sentinel service
    # name (redis://mymaster/0), as in django-redis; sentinel_kwargs as sorted
    # pairs so the options stay hashable (``tiers.process.state_for``).
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_kwargs: tuple[tuple[str, Any], ...] = ()
    l1_max_bytes: int = DEFAULT_L1_MAX_BYTES
    l1_max_age: float | None = 300.0
    compress_min_bytes: int = 1024
    pickle_fallback: bool = True
    pool_size: int = 25
    socket_timeout: float = 0.25
    socket_connect_timeout: float = 0.25
    pool_timeout: float = 0.5
    signing_key: str | None = None
    signing_key_fallbacks: tuple[str, ...] = ()
    lease_timeout: float = 5.0
    lease_wait: float = 2.0
    early_refresh_beta: float = 1.0
    # Seconds an L1 hit may trail a write another process made (tiers.coherence).
    staleness_bound: float = 0.1
    problems: tuple[Problem, ...] = field(default=(), compare=False)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]


def _split_location(location: Any) -> tuple[list[str], list[Problem]]:
    if not location:
        return [], []
    if isinstance(location, str):
        urls = [u.strip() for u in location.split(",") if u.strip()]
    elif isinstance(location, (list, tuple)):
        urls = list(location)
    else:
        return [], [Problem("velro_cache.E001", "error", f"LOCATION must be a Redis URL or a list of them, not {type(location).__name__}.")]
    problems = []
    for url in urls:
        if not isinstance(url, str) or urlsplit(url).scheme not in REDIS_SCHEMES:
            problems.append(
                Problem(
                    "velro_cache.E001",
                    "error",
                    f"LOCATION entry {url!r} is not a Redis URL.",
                    hint=SENTINEL_HINT
                    if isinstance(url, str) and urlsplit(url).scheme == "sentinel"
                    else "Use redis://host:port/db, rediss:// or unix://; leave LOCATION out for an L1-only cache.",
                )
            )
    return urls, problems


def _cluster_mode(urls: list, options: dict) -> tuple[bool, list[Problem]]:
    """Several URLs, or OPTIONS["CLUSTER"] = True, mean a Redis Cluster."""
    flag = options.get("CLUSTER")
    problems: list[Problem] = []
    if "CLUSTER" in options and not isinstance(flag, bool):
        problems.append(Problem("velro_cache.E016", "error", f"OPTIONS['CLUSTER'] must be True or False, got {flag!r}."))
        flag = None
    if flag is False and len(urls) > 1:
        problems.append(
            Problem(
                "velro_cache.E019",
                "error",
                f"LOCATION lists {len(urls)} Redis URLs but OPTIONS['CLUSTER'] is False.",
                hint="Several URLs are the startup nodes of a Redis Cluster; for a single Redis give one URL.",
            )
        )
    cluster = flag is True or (flag is None and len(urls) > 1)
    if cluster:
        problems.extend(_cluster_url_problems([u for u in urls if isinstance(u, str) and urlsplit(u).scheme in REDIS_SCHEMES]))
    return cluster, problems


def _cluster_url_problems(urls: list[str]) -> list[Problem]:
    """What RedisCluster cannot use: sockets, databases other than 0, nodes reached differently."""
    problems = []
    by_host = []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            problems.append(
                Problem(
                    "velro_cache.E018",
                    "error",
                    f"Cluster LOCATION entry {url!r} is a unix socket; Redis Cluster nodes are reached by host and port.",
                )
            )
            continue
        by_host.append(parts)
        db = _database_of(parts)
        if db != "0":
            problems.append(
                Problem(
                    "velro_cache.E017",
                    "error",
                    f"Cluster LOCATION entry {url!r} selects database {db}; a Redis Cluster has only database 0.",
                    hint="Leave the database out of the URL or use /0; separate caches with KEY_PREFIX.",
                )
            )
    if len({(parts.scheme, parts.username, parts.password) for parts in by_host}) > 1:
        problems.append(
            Problem(
                "velro_cache.E018",
                "error",
                "Cluster LOCATION entries differ in scheme or credentials; one client reaches every node with the same settings.",
            )
        )
    return problems


def _sentinel_options(urls: list, options: dict, cluster: bool) -> tuple[dict[str, Any], list[Problem]]:
    """OPTIONS["SENTINELS"] and ["SENTINEL_KWARGS"], django-redis's shape: LOCATION names the master's service."""
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    if "SENTINEL_KWARGS" in options:
        given = options["SENTINEL_KWARGS"]
        if not isinstance(given, dict) or not set(given) <= SENTINEL_KWARG_NAMES:
            problems.append(
                Problem(
                    "velro_cache.E063",
                    "error",
                    f"OPTIONS['SENTINEL_KWARGS'] must be a dict of connection settings for the sentinels, got {given!r}.",
                    hint=f"Known keys: {', '.join(sorted(SENTINEL_KWARG_NAMES))}.",
                )
            )
        elif "SENTINELS" not in options:
            problems.append(Problem("velro_cache.E063", "error", "OPTIONS['SENTINEL_KWARGS'] is given without OPTIONS['SENTINELS']."))
        else:
            values["sentinel_kwargs"] = tuple(sorted(given.items()))
    if "SENTINELS" not in options:
        return values, problems
    sentinels = _sentinel_addresses(options["SENTINELS"])
    if sentinels is None:
        problems.append(
            Problem(
                "velro_cache.E061",
                "error",
                f"OPTIONS['SENTINELS'] must be a non-empty list of (host, port) pairs, got {options['SENTINELS']!r}.",
                hint='For example [("10.0.0.1", 26379), ("10.0.0.2", 26379), ("10.0.0.3", 26379)].',
            )
        )
    else:
        values["sentinels"] = sentinels
    location_problem = _sentinel_location_problem(urls, cluster)
    if location_problem:
        problems.append(location_problem)
    return values, problems


def _sentinel_addresses(given: Any) -> tuple[tuple[str, int], ...] | None:
    """The sentinels as (host, port) pairs, or None when ``given`` is not a non-empty list of them."""
    if not isinstance(given, (list, tuple)) or not given:
        return None
    pairs = []
    for entry in given:
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            return None
        host, port = entry
        if not isinstance(host, str) or not host or isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            return None
        pairs.append((host, port))
    return tuple(pairs)


def _sentinel_location_problem(urls: list, cluster: bool) -> Problem | None:
    """With SENTINELS, LOCATION is one redis:// or rediss:// URL whose host is the master's service name."""
    parts = urlsplit(urls[0]) if len(urls) == 1 and isinstance(urls[0], str) else None
    if cluster or parts is None or parts.scheme != "redis" or not parts.hostname or parts.port:
        return Problem(
            "velro_cache.E062",
            "error",
            f"With OPTIONS['SENTINELS'], LOCATION must be one URL naming the master's service, got {urls!r}.",
            hint="For example redis://mymaster/0 (redis://, the sentinels' name for the master, without a port), "
            "with credentials for the master in the URL if it needs them; not a cluster.",
        )
    return None


def _database_of(parts: Any) -> str:
    """The database a redis:// URL selects, as text ("0" when none), from its path or ?db=."""
    db = parts.path.strip("/") or "0"
    for name, value in parse_qsl(parts.query):
        if name == "db":
            db = value or "0"
    return db


def _positive_number(value: Any, name: str, error_id: str, *, integer: bool, allow_none: bool = False) -> Problem | None:
    if value is None and allow_none:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        kind = "a positive integer" if integer else "a positive number"
        extra = " or None" if allow_none else ""
        return Problem(error_id, "error", f"OPTIONS {name} must be {kind}{extra}, got {value!r}.")
    return None


def _unknown_keys(given: Iterable[str], known: set[str], what: str) -> list[Problem]:
    """E060 for each key of ``given`` that is not in ``known``, sorted by name.

    An error, not a warning: an option this backend does not know is most
    often one meant for another backend (django-redis's ``CLIENT_CLASS``, a
    misspelt ``SENTINELS``), and running on without it silently changes what
    the cache is (for example a cache without its Redis).
    """
    hint = f"Known keys: {', '.join(sorted(known))}."
    return [
        Problem("velro_cache.E060", "error", f"Unknown {what} {name!r}: TieredCache has no such option.", hint=hint)
        for name in sorted(set(given) - known)
    ]


def tiered_caches() -> dict[str, TieredOptions]:
    """Every CACHES alias TieredCache serves, with its parsed OPTIONS, in settings order.

    The one reading of CACHES for them: the system checks report these
    options' problems, the telemetry picks its Redis among them, commands
    list them. Read each call, so ``override_settings`` is seen.
    """
    from django.conf import settings

    configured = getattr(settings, "CACHES", {})
    return {
        alias: parse_options(config.get("LOCATION"), config.get("OPTIONS"))
        for alias, config in configured.items()
        if config.get("BACKEND") == BACKEND_PATH
    }


def parse_options(location: Any, options: dict | None) -> TieredOptions:
    """Turn LOCATION and OPTIONS into a TieredOptions, collecting every problem."""
    options = dict(options or {})
    urls, problems = _split_location(location)
    values: dict[str, Any] = {"redis_urls": tuple(u for u in urls if isinstance(u, str))}
    values["cluster"], cluster_problems = _cluster_mode(urls, options)
    problems.extend(cluster_problems)
    sentinel_values, sentinel_problems = _sentinel_options(urls, options, values["cluster"])
    values.update(sentinel_values)
    problems.extend(sentinel_problems)

    l1 = options.get("L1", {})
    if not isinstance(l1, dict):
        problems.append(Problem("velro_cache.E002", "error", f"OPTIONS['L1'] must be a dict, got {type(l1).__name__}."))
        l1 = {}
    for name, attr, error_id, integer, allow_none in (
        ("MAX_BYTES", "l1_max_bytes", "velro_cache.E003", True, False),
        ("MAX_AGE", "l1_max_age", "velro_cache.E004", False, True),
    ):
        if name in l1:
            problem = _positive_number(l1[name], f"['L1']['{name}']", error_id, integer=integer, allow_none=allow_none)
            if problem:
                problems.append(problem)
            else:
                values[attr] = l1[name]
    problems.extend(_unknown_keys(l1, L1_KEYS, "OPTIONS['L1'] key"))

    for name, attr, error_id, integer in (
        ("COMPRESS_MIN_BYTES", "compress_min_bytes", "velro_cache.E005", True),
        ("POOL_SIZE", "pool_size", "velro_cache.E006", True),
        ("SOCKET_TIMEOUT", "socket_timeout", "velro_cache.E007", False),
        ("SOCKET_CONNECT_TIMEOUT", "socket_connect_timeout", "velro_cache.E007", False),
        ("POOL_TIMEOUT", "pool_timeout", "velro_cache.E007", False),
    ):
        if name in options:
            problem = _positive_number(options[name], f"[{name!r}]", error_id, integer=integer)
            if problem:
                problems.append(problem)
            else:
                values[attr] = options[name]
    for name, attr in (("LEASE_TIMEOUT", "lease_timeout"), ("LEASE_WAIT", "lease_wait")):
        if name in options:
            problem = _positive_number(options[name], f"[{name!r}]", "velro_cache.E014", integer=False)
            if problem:
                problems.append(problem)
            else:
                values[attr] = options[name]
    if "EARLY_REFRESH_BETA" in options:
        beta = options["EARLY_REFRESH_BETA"]
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or beta < 0:
            problems.append(
                Problem(
                    "velro_cache.E015",
                    "error",
                    f"OPTIONS['EARLY_REFRESH_BETA'] must be a number >= 0 (0 turns early refresh off), got {beta!r}.",
                )
            )
        else:
            values["early_refresh_beta"] = float(beta)
    if "STALENESS_BOUND" in options:
        bound = options["STALENESS_BOUND"]
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not 0.01 <= bound <= 60:
            problems.append(
                Problem(
                    "velro_cache.E050",
                    "error",
                    f"OPTIONS['STALENESS_BOUND'] must be a number of seconds from 0.01 to 60, got {bound!r}.",
                    hint="It bounds how long an L1 hit may trail another process's write when Redis stalls.",
                )
            )
        else:
            values["staleness_bound"] = float(bound)
    if "PICKLE_FALLBACK" in options:
        if isinstance(options["PICKLE_FALLBACK"], bool):
            values["pickle_fallback"] = options["PICKLE_FALLBACK"]
        else:
            problems.append(
                Problem(
                    "velro_cache.E008", "error", f"OPTIONS['PICKLE_FALLBACK'] must be True or False, got {options['PICKLE_FALLBACK']!r}."
                )
            )
    if "SIGNING_KEY" in options:
        if isinstance(options["SIGNING_KEY"], str) and options["SIGNING_KEY"]:
            values["signing_key"] = options["SIGNING_KEY"]
        else:
            problems.append(Problem("velro_cache.E009", "error", "OPTIONS['SIGNING_KEY'] must be a non-empty string."))
    if "SIGNING_KEY_FALLBACKS" in options:
        fallbacks = options["SIGNING_KEY_FALLBACKS"]
        if isinstance(fallbacks, (list, tuple)) and all(isinstance(key, str) and key for key in fallbacks):
            values["signing_key_fallbacks"] = tuple(fallbacks)
        else:
            problems.append(
                Problem(
                    "velro_cache.E045",
                    "error",
                    f"OPTIONS['SIGNING_KEY_FALLBACKS'] must be a list of non-empty strings, got {fallbacks!r}.",
                )
            )
    problems.extend(_unknown_keys(options, TOP_KEYS, "OPTIONS key"))
    return TieredOptions(problems=tuple(problems), **values)
