"""What an authorized GET of a generation costs in Redis round trips, first-time and repeat.

Each round trip on loopback is 50-100 us, so their number is what decides
whether a first-time read can stay within 1.1x of the same read with caching
off (issue 12), and what keeps a repeat read at a Redis round trip or two.
These tests pin the counts of real requests against the example project on
the real Redis, counted where they leave for it: each send on a connection
is one round trip (a pipeline or a script is one, as Redis sees it).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from model_bakery import baker
from studio.models import ApiToken, Generation, Team, TeamMembership

from tests.support import RoundTrips

pytestmark = pytest.mark.django_db(transaction=True)  # the rows' creation retires on a real commit

# The counts of docs/architecture.md ("What an authorized GET costs in Redis"); before they were cut: 10, 19, 1, 9.
FIRST_TIME_IN_SESSION = 6  # the token's identity and the user's role context cached; the generation nobody's read
FIRST_TIME_COLD = 9  # a new token, a user never seen, a generation nobody read
REPEAT = 1  # the authorization versions, read authoritatively once per request; all else from L1
FILLED_BY_ANOTHER_WORKER = 6  # each value once from Redis, nothing loaded


@pytest.fixture(autouse=True)
def clean_cache() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()


def another_worker() -> None:
    """Forget this process's L1: the request runs as in a worker that never saw these rows (Redis keeps them)."""
    cache._state.store.clear()


def reader_of(team: Team) -> dict[str, str]:
    user = baker.make(User, is_active=True)
    baker.make(TeamMembership, team=team, user=user, role="viewer")
    return {"Authorization": f"Bearer {baker.make(ApiToken, user=user).key}"}


def get(client, generation: Generation, headers: dict[str, str]) -> int:
    with RoundTrips() as trips:
        response = client.get(f"/api/generations/{generation.pk}/", headers=headers)
    assert response.status_code == 200, response.content
    return trips.sent


@pytest.fixture
def team() -> Team:
    return baker.make(Team)


def generation_of(team: Team) -> Generation:
    return baker.make(Generation, owner=baker.make(User, is_active=True), team=team, status="succeeded")


def warm_worker(client, team: Team) -> None:
    """A worker that has served requests: its data types' namespace tokens are known, these rows are not."""
    get(client, generation_of(team), reader_of(team))
    another_worker()
    get(client, generation_of(team), reader_of(team))


def test_a_first_time_read_in_a_session_costs_few_round_trips(client, team):
    """The common first-time read: a user already in session opens a generation nobody has read."""
    headers = reader_of(team)
    seen, new = generation_of(team), generation_of(team)
    warm_worker(client, team)
    get(client, seen, headers)  # the session's earlier request: token identity and role context cached
    sent = get(client, new, headers)
    assert sent <= FIRST_TIME_IN_SESSION, f"{sent} round trips"


def test_a_cold_first_time_read_costs_few_round_trips(client, team):
    """A new token, a user never seen, a generation never read, in a worker that holds none of it."""
    headers = reader_of(team)
    generation = generation_of(team)
    warm_worker(client, team)
    sent = get(client, generation, headers)
    assert sent <= FIRST_TIME_COLD, f"{sent} round trips"


def test_a_repeat_read_costs_one_round_trip(client, team):
    headers = reader_of(team)
    generation = generation_of(team)
    get(client, generation, headers)
    sent = get(client, generation, headers)
    assert sent <= REPEAT, f"{sent} round trips"


def test_a_repeat_read_in_another_worker_is_served_from_redis(client, team):
    """Filled by one worker, read by another: each value once from Redis, nothing loaded again."""
    headers = reader_of(team)
    generation = generation_of(team)
    get(client, generation, headers)
    another_worker()
    sent = get(client, generation, headers)
    assert sent <= FILLED_BY_ANOTHER_WORKER, f"{sent} round trips"
