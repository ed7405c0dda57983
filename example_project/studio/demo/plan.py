"""A reproducible plan of API requests with the skew of real traffic.

Popularity follows a Zipf law over generations (recent ones tend to be hotter),
users are active in a Zipf-like way too, and the mix is mostly reads with some
media fetches, /me calls, batch reads, ~5 % edits and a few requests that must
fail (no token, bad token, missing generation, strangers and viewers trying to
read or edit what is not theirs). Planning happens before the run so that the
timings measure Django, not the random number generator.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass, field

from studio.models import ApiToken, Generation, TeamMembership

DETAIL = "GET /api/generations/<id>/"
MEDIA = "GET /api/generations/<id>/media/"
PATCH = "PATCH /api/generations/<id>/"
BATCH = "GET /api/generations/?ids="
ME = "GET /api/me/"
CREATE = "POST /api/generations/"
ENDPOINTS = (DETAIL, MEDIA, PATCH, BATCH, ME, CREATE)

ZIPF_EXPONENT = 1.1
MIX = {
    "read": 62,
    "media": 12,
    "me": 8,
    "batch": 7,
    "patch": 5,
    "no_token": 2,
    "bad_token": 2,
    "missing": 2,
}


@dataclass(frozen=True)
class PlannedRequest:
    endpoint: str
    method: str
    path: str
    token: str | None
    body: str | None = None
    creates: int | None = None  # a creation: the ordinal that later paths name as ``new:<k>`` (studio.traffic)


def zipf_cum_weights(n: int, exponent: float = ZIPF_EXPONENT) -> list[float]:
    return list(itertools.accumulate(1.0 / (rank + 1) ** exponent for rank in range(n)))


@dataclass
class World:
    """What the planner needs to know about the seeded data, loaded once."""

    generations: list[int]  # most popular first
    owner_of: dict[int, int]
    team_of: dict[int, int | None]
    members: dict[int, list[int]]  # team id -> user ids
    token_of: dict[int, str]
    users: list[int]  # most active first
    team_generations: dict[int, list[int]] = field(default_factory=dict)
    max_generation_id: int = 0

    @classmethod
    def load(cls, rng: random.Random) -> World:
        rows = list(Generation.objects.order_by("-created_at").values_list("pk", "owner_id", "team_id"))
        # Rank by recency with noise, so the newest are likely, not certain, to be hottest.
        order = sorted(range(len(rows)), key=lambda i: (i + 1) * rng.lognormvariate(0, 1.0))
        generations = [rows[i][0] for i in order]
        members: dict[int, list[int]] = {}
        for team_id, user_id in TeamMembership.objects.values_list("team_id", "user_id"):
            members.setdefault(team_id, []).append(user_id)
        token_of = dict(ApiToken.objects.order_by("created_at").values_list("user_id", "key"))
        users = list(token_of)
        rng.shuffle(users)
        world = cls(
            generations=generations,
            owner_of={pk: owner for pk, owner, _ in rows},
            team_of={pk: team for pk, _, team in rows},
            members=members,
            token_of=token_of,
            users=users,
            max_generation_id=max((pk for pk, _, _ in rows), default=0),
        )
        for pk in generations:
            team = world.team_of[pk]
            if team is not None and members.get(team):
                world.team_generations.setdefault(team, []).append(pk)
        return world


class Planner:
    def __init__(self, world: World, rng: random.Random) -> None:
        self.world = world
        self.rng = rng
        self._gen_weights = zipf_cum_weights(len(world.generations))
        self._user_weights = zipf_cum_weights(len(world.users), 0.8)
        self._teams = sorted(world.team_generations)
        self._team_weights = {t: zipf_cum_weights(len(g)) for t, g in world.team_generations.items()}

    def plan(self, count: int) -> list[PlannedRequest]:
        kinds = self.rng.choices(list(MIX), weights=list(MIX.values()), k=count)
        return [getattr(self, f"_{kind}")() for kind in kinds]

    # -- picks ---------------------------------------------------------------
    def _generation(self) -> int:
        return self.rng.choices(self.world.generations, cum_weights=self._gen_weights)[0]

    def _active_user(self) -> int:
        return self.rng.choices(self.world.users, cum_weights=self._user_weights)[0]

    def _token(self, user_id: int) -> str:
        return self.world.token_of[user_id]

    def _reader(self, pk: int) -> int:
        """Mostly the owner, often a teammate, sometimes a stranger (-> 403)."""
        team = self.world.team_of[pk]
        roll = self.rng.random()
        if roll < 0.04:
            return self.rng.choice(self.world.users)
        if team is not None and roll < 0.45 and self.world.members.get(team):
            return self.rng.choice(self.world.members[team])
        return self.world.owner_of[pk]

    # -- request kinds -------------------------------------------------------
    def _read(self) -> PlannedRequest:
        pk = self._generation()
        return PlannedRequest(DETAIL, "GET", f"/api/generations/{pk}/", self._token(self._reader(pk)))

    def _media(self) -> PlannedRequest:
        pk = self._generation()
        return PlannedRequest(
            MEDIA, "GET", f"/api/generations/{pk}/media/", self._token(self._reader(pk))
        )

    def _me(self) -> PlannedRequest:
        return PlannedRequest(ME, "GET", "/api/me/", self._token(self._active_user()))

    def _batch(self) -> PlannedRequest:
        """A team feed: popular generations of one team plus a couple of others."""
        rng = self.rng
        if self._teams:
            team = rng.choice(self._teams)
            user = rng.choice(self.world.members[team])
            ids = rng.choices(
                self.world.team_generations[team], cum_weights=self._team_weights[team],
                k=rng.randint(5, 20),
            )
        else:
            user, ids = self._active_user(), []
        ids += [self._generation() for _ in range(2)]
        if rng.random() < 0.1:
            ids.append(self.world.max_generation_id + rng.randint(1, 10_000))
        query = ",".join(str(pk) for pk in dict.fromkeys(ids))
        return PlannedRequest(BATCH, "GET", f"/api/generations/?ids={query}", self._token(user))

    def _patch(self) -> PlannedRequest:
        """Edits come from owners and teammates; teammates who are viewers get 403."""
        rng = self.rng
        pk = self._generation()
        team = self.world.team_of[pk]
        roll = rng.random()
        if roll < 0.6 or team is None or not self.world.members.get(team):
            user = self.world.owner_of[pk] if roll < 0.95 else rng.choice(self.world.users)
        else:
            user = rng.choice(self.world.members[team])
        if rng.random() < 0.7:
            body = {"prompt": f"retouched #{rng.randint(1, 10**6)}: more contrast, softer light"}
        else:
            body = {"status": rng.choice(["succeeded", "failed"])}
        return PlannedRequest(
            PATCH, "PATCH", f"/api/generations/{pk}/", self._token(user), json.dumps(body)
        )

    def _no_token(self) -> PlannedRequest:
        return PlannedRequest(DETAIL, "GET", f"/api/generations/{self._generation()}/", None)

    def _bad_token(self) -> PlannedRequest:
        return PlannedRequest(
            DETAIL, "GET", f"/api/generations/{self._generation()}/", f"{self.rng.getrandbits(160):040x}"
        )

    def _missing(self) -> PlannedRequest:
        pk = self.world.max_generation_id + self.rng.randint(1, 10_000)
        return PlannedRequest(
            DETAIL, "GET", f"/api/generations/{pk}/", self._token(self._active_user())
        )
