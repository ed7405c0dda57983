"""Velro's warming plan: what the first requests after a start read, loaded before they come.

In the plan's order (lower priority first):

1. ``active_users`` (L1, every worker): the 100 most active users of the last
   24 h, from the ``ActiveUser`` view; their token identities, team lists and
   authorization contexts (``authz.warm_contexts``: their role on every team),
   and the facts (owner, team) of the 500 recent generations
   (``authz.warm_objects``), so their check on any recent generation, one
   they never opened included, runs no query.
2. ``recent_generations`` (L1 and L2): the 500 most recent generations of the
   last 48 h.
3. ``team_memberships`` (L2, one worker for all): the team lists of every user
   with an active membership.
4. ``system_config`` (L1 and L2): every SystemConfig value.

At runtime a session's start (a login, or a token's first request: its
identity was not cached) preloads that user's working set in the background
(``preload_working_set``), scored as the ``login`` / ``token_session``
predictors of ``velro_cache.warming.predictor_results()``.

The materialized views answer *which* rows to warm (their top-N queries read
a few pages instead of scanning the live tables: benchmarks/results/views.md),
but the values stored are loaded from the live tables by primary key, through
the same read-through helpers the views use. A view trails its sources by up
to a refresh period, so a row copied from it could predate an invalidation
that has already committed, and storing it would serve what that invalidation
retired. Loaded live and stamped with tokens read before the load, a warmed
value is exactly as fresh as one a request would have cached.
"""

from __future__ import annotations

from collections.abc import Iterator

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in

from velro_cache import authz, warming
from velro_cache.reads import cached_read_many

from .auth import identity_of
from .materialized import active_memberships, recent_generation_ids, top_active_users
from .models import ApiToken, Generation, RecentGeneration, SystemConfig
from .reads import generation_metas, system_config, team_memberships_many, token_digest, token_key

ACTIVE_USERS = 100
RECENT_GENERATIONS = 500
BATCH = 100


def warm_active_users() -> Iterator[int]:
    """The top users' token identities, team lists and role contexts, a batch of users at a time,
    after the recent generations' facts (shared by every user's checks)."""
    user_ids = [row["user_id"] for row in top_active_users(ACTIVE_USERS)]
    yield authz.warm_objects(Generation, recent_generation_ids(RECENT_GENERATIONS))
    for batch in warming.batches(user_ids, BATCH):
        yield _warm_identities(batch)
        yield len(team_memberships_many(batch))
        yield _warm_contexts(batch)


def _warm_identities(user_ids: list[int]) -> int:
    """The ``session:token:<digest>`` entries of these users' tokens (one query, no last_used_at write)."""
    tokens = {token.key: token for token in ApiToken.objects.filter(user_id__in=user_ids).select_related("user")}
    keys = {key: token_key(token_digest(key)) for key in tokens}
    cached_read_many(keys, lambda wanted: {key: identity_of(tokens[key].user) for key in wanted})
    return len(keys)


def _warm_contexts(user_ids: list[int]) -> int:
    """Each active user's role context: read from the database under version tokens read
    before, so a revoke that commits meanwhile retires what this stores."""
    return authz.warm_contexts(get_user_model().objects.filter(pk__in=user_ids, is_active=True))


def warm_recent_generations() -> Iterator[int]:
    for batch in warming.batches(recent_generation_ids(RECENT_GENERATIONS), BATCH):
        yield len(generation_metas(batch))


def warm_team_memberships() -> Iterator[int]:
    user_ids = list(dict.fromkeys(row["user_id"] for row in active_memberships()))
    for batch in warming.batches(user_ids, 500):
        yield len(team_memberships_many(batch))


def warm_system_config() -> int:
    keys = list(SystemConfig.objects.values_list("key", flat=True))
    for key in keys:
        system_config(key)
    return len(keys)


PLAN = warming.declare(
    warming.Plan(
        [
            warming.Step("active_users", warm_active_users, priority=10, tiers={warming.L1}, budget=10.0),
            warming.Step("recent_generations", warm_recent_generations, priority=20, tiers={warming.L1, warming.L2}, budget=10.0),
            warming.Step("team_memberships", warm_team_memberships, priority=30, tiers={warming.L2}, budget=10.0),
            warming.Step("system_config", warm_system_config, priority=40, tiers={warming.L1, warming.L2}, budget=5.0),
        ],
        budget=30.0,
    )
)


# -- runtime warming: a user's working set when their session starts ---------------------------

SESSION_GENERATIONS = 50  # a user's most recent generations (own and their teams') preloaded


def preload_working_set(user_id: int) -> list[str]:
    """Warm what a user's session reads first: their team list, their teams' and own recent
    generations, their facts and the user's role context. Returns the logical keys warmed
    (contexts and facts are keyed by version tokens, so they are not scored)."""
    from .reads import generation_key, memberships_key

    teams = team_memberships_many([user_id])
    team_ids = {row["team_id"] for row in teams.get(user_id, [])}
    columns = ("id", "owner_id", "team_id")
    newest = RecentGeneration.objects.order_by("-created_at")
    recent = [
        *newest.filter(owner_id=user_id).values_list(*columns)[:SESSION_GENERATIONS],
        *newest.filter(team_id__in=team_ids).values_list(*columns)[:SESSION_GENERATIONS],
    ]
    recent = sorted(set(recent), key=lambda row: -row[0])[:SESSION_GENERATIONS]
    ids = [pk for pk, _, _ in recent]
    generation_metas(ids)
    authz.warm_objects(Generation, ids)
    _warm_contexts([user_id])
    return [memberships_key(user_id), *(generation_key(pk) for pk in ids)]


def start_session(user_id: int, predictor: str) -> None:
    """Queue the working set's preload (once per user per ``runtime.DEDUPE_SECONDS``), when
    ``settings.STUDIO_SESSION_PRELOAD`` is on (the example settings turn it on)."""
    if not getattr(settings, "STUDIO_SESSION_PRELOAD", False):
        return
    warming.preload(predictor, lambda: preload_working_set(user_id), dedupe=("user", user_id))


def _on_login(sender: object, request: object, user: object, **kwargs: object) -> None:
    start_session(user.pk, "login")  # type: ignore[attr-defined]


user_logged_in.connect(_on_login, dispatch_uid="studio.warming.login")
