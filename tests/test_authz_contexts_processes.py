"""Role contexts across OS processes: every revocation path, 0 stale allows, with the allows served from contexts.

The example API under gunicorn (3 sync workers, the fixture of
``tests/test_authz_processes.py``) decides checks from role contexts and
object facts (``AUTHZ_CONTEXTS`` is on by default). Each case of the
revocation matrix (``tests/test_write_capture.py``: a save of an instance
however obtained, every QuerySet write path, bulk paths, raw SQL, proxies,
ownership transfers and team moves, flags, pk reuse) warms the allow in
several workers, checks that the workers really cached the user's context
(read from Redis by this process), commits the revoke here, and the requests
that start afterwards, served by whichever workers take them, must all be
denied. A second pass asks about an object the user never checked before the
revoke (its facts cached by another user's request), the case only contexts
decide without a query.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.auth.models import User
from django.core.cache import caches
from studio.models import ApiToken, Generation

from tests.test_authz_processes import WORKERS, check, server  # noqa: F401  (the fixture)
from tests.test_write_capture import REVOCATIONS, _warm_then_after, proxies  # noqa: F401  (a fixture)
from velro_cache import authz

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

# Once per path (test_write_capture.py runs the same paths twice, also with contexts on by default);
# VELRO_CONTEXT_ROUNDS=3 for more.
ROUNDS = int(os.environ.get("VELRO_CONTEXT_ROUNDS", "1"))


def contexts_in_redis(user: User) -> list[str]:
    """The role-context keys the workers stored in Redis for the user (by name: their frames are
    signed with the example project's SECRET_KEY, which this process does not share)."""
    return caches["default"].keys(f"auth:user:{user.pk}:v:*:ctx:*")


def _sibling(gen: Generation) -> Generation:
    """Another generation of the same owner and team: the user never asks about it before the revoke."""
    return Generation.objects.create(owner_id=gen.owner_id, team_id=gen.team_id, prompt="p", model_name="m", status="succeeded")


def _allowed_now(user: User, gen: Generation, action: str) -> bool:
    """The truth after the revoke, from the database (the user may be gone or inactive)."""
    user = User.objects.filter(pk=user.pk).first()
    if user is None or not user.is_active:
        return False
    policy = authz.registry.for_model(Generation)
    return policy.allows(policy.roles_of(user.pk, [gen.pk])[gen.pk], action)


@pytest.mark.parametrize("path", REVOCATIONS, ids=[p.__name__[2:] for p in REVOCATIONS])
def test_a_committed_revoke_retires_every_workers_context(server, proxies, path):  # noqa: F811
    port, _log = server
    stale = []
    for _ in range(ROUNDS):
        user, gen, action, revoke = path()
        sibling = _sibling(gen)
        key = ApiToken.objects.create(user=user).key
        owner_key = ApiToken.objects.create(user_id=gen.owner_id).key
        warm, _ = _warm_then_after(port, functools.partial(check, port, key, gen.pk, action), lambda: None)
        assert set(warm) == {200}, warm
        assert contexts_in_redis(user), "the workers decided without a role context"
        assert check(port, owner_key, sibling.pk, "read") == 200  # the sibling's facts, cached by its owner's request
        revoke()  # committed when it returns
        with ThreadPoolExecutor(max_workers=2 * WORKERS) as pool:
            on_gen = list(pool.map(functools.partial(check, port, key, gen.pk), [action] * 3 * WORKERS))
            on_sibling = list(pool.map(functools.partial(check, port, key, sibling.pk), [action] * 3 * WORKERS))
        stale += [("generation", s) for s in on_gen if s == 200]
        if not _allowed_now(user, sibling, action):
            stale += [("never asked before", s) for s in on_sibling if s == 200]
    assert stale == [], f"{len(stale)} stale allows after the revoke committed: {stale}"
