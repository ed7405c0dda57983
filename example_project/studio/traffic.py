"""The Velro traffic model: one place for the request stream of the demo and the benchmarks.

What real API traffic on Velro looks like, reproducibly (everything from one
``random.Random``):

- **Sessions.** A user arrives, makes a burst of requests and leaves; a few
  dozen sessions are open at once and their requests interleave. Within a
  session a user revisits what they just saw (a detail, then its media, the
  same feed again), which is what makes a cache pay.
- **Zipf popularity** of teams (which team's members are active) and of
  generations within a team and within a user's own work (ranked by recency
  with noise, ``World.load``); some sessions come from Zipf-active users
  directly.
- **New generations over time.** ~2 % of requests create one
  (``POST /api/generations/``); later reads in the owner's and teammates'
  sessions prefer the newest ones. The server assigns their ids, so the
  stream names them ``new:<k>`` (the k-th creation) and the client resolves
  them with ``resolve`` once the creation answered.
- **5 % writes** (edits and creations), and **401/403/404** mixed in: no
  token, a bad token, a missing generation, a generation of a team the
  caller is not in.

Plans are made before a run, so timings measure the server, not the random
number generator.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from .demo.plan import BATCH, CREATE, DETAIL, ME, MEDIA, PATCH, PlannedRequest, World, zipf_cum_weights

NEW = "new:{}"
NEW_ID = re.compile(r"new:(\d+)")

# What a session's next request is (weights): patch + create come to 5 % of the stream, once the
# session openings (/me) and the media that follow a detail are counted in.
MIX = {
    "read": 51, "media": 8, "me": 7, "batch": 14, "patch": 4, "create": 2.5,
    "forbidden": 3, "missing": 2, "no_token": 1.5, "bad_token": 1.5,
}
REVISIT = 0.45  # a read in a session goes back to something the session already saw
MEDIA_AFTER_DETAIL = 0.35  # a detail view is followed by its media
NEW_GENERATION_READ = 0.25  # a read picks one of the newest generations the user can see
RECENT_NEW = 40  # how many of the newest creations count as "new"


@dataclass
class Session:
    user: int
    left: int
    seen: list[int | str] = field(default_factory=list)


class TrafficModel:
    """Plans a stream of API requests over a seeded ``World``."""

    def __init__(self, world: World, rng: random.Random, *, open_sessions: int = 40, session_mean: float = 8.0) -> None:
        self.world = world
        self.rng = rng
        self.open_sessions = open_sessions
        self.session_mean = session_mean
        self.user_of = {token: user for user, token in world.token_of.items()}
        self._teams = sorted(world.team_generations, key=lambda team: -len(world.members.get(team, [])))
        self._team_weights = zipf_cum_weights(len(self._teams), 1.0)
        self._user_weights = zipf_cum_weights(len(world.users), 0.8)
        self._gen_weights = {team: zipf_cum_weights(len(gens)) for team, gens in world.team_generations.items()}
        self.own: dict[int, list[int]] = {}
        for pk in world.generations:  # most popular first
            self.own.setdefault(world.owner_of[pk], []).append(pk)
        self._own_weights: dict[int, list[float]] = {}
        self.teams_of: dict[int, list[int]] = {}
        for team, users in world.members.items():
            for user in users:
                self.teams_of.setdefault(user, []).append(team)
        self.created: list[tuple[str, int, int | None]] = []  # (name, owner, team), in creation order
        self._sessions: list[Session] = []

    # -- the stream ------------------------------------------------------------------------

    def stream(self, count: int) -> list[PlannedRequest]:
        plan: list[PlannedRequest] = []
        while len(plan) < count:
            session = self._session()
            plan.extend(self._next(session))
            session.left -= 1
            if session.left <= 0:
                self._sessions.remove(session)
        return plan[:count]

    def _session(self) -> Session:
        while len(self._sessions) < self.open_sessions:
            length = max(1, round(self.rng.expovariate(1 / self.session_mean)))
            self._sessions.append(Session(self._session_user(), length))
        return self.rng.choice(self._sessions)

    def _session_user(self) -> int:
        """Most sessions come from a member of a Zipf-popular team, the rest from Zipf-active users."""
        if self._teams and self.rng.random() < 0.7:
            team = self.rng.choices(self._teams, cum_weights=self._team_weights)[0]
            return self.rng.choice(self.world.members[team])
        return self.rng.choices(self.world.users, cum_weights=self._user_weights)[0]

    def _next(self, session: Session) -> list[PlannedRequest]:
        if not session.seen and self.rng.random() < 0.5:
            return [self._request(ME, "GET", "/api/me/", session.user)]
        kind = self.rng.choices(list(MIX), weights=list(MIX.values()))[0]
        return getattr(self, f"_{kind}")(session)

    def _request(self, endpoint: str, method: str, path: str, user: int | None, body: dict | None = None,
                 creates: int | None = None) -> PlannedRequest:
        token = self.world.token_of[user] if user is not None else None
        return PlannedRequest(endpoint, method, path, token, json.dumps(body) if body is not None else None, creates)

    # -- picks -----------------------------------------------------------------------------

    def _visible(self, user: int) -> int | str | None:
        """A generation the user may read: a new one of theirs or their teams', their own, or a team's popular one."""
        rng = self.rng
        teams = self.teams_of.get(user, [])
        if self.created and rng.random() < NEW_GENERATION_READ:
            mine = [name for name, owner, team in self.created[-RECENT_NEW:] if owner == user or team in teams]
            if mine:
                return rng.choice(mine)
        own = self.own.get(user, [])
        if own and (not teams or rng.random() < 0.3):
            weights = self._own_weights.setdefault(user, zipf_cum_weights(len(own)))
            return rng.choices(own, cum_weights=weights)[0]
        teams = [team for team in teams if team in self._gen_weights]
        if not teams:
            return None
        team = rng.choice(teams)
        return rng.choices(self.world.team_generations[team], cum_weights=self._gen_weights[team])[0]

    def _pick(self, session: Session) -> int | str | None:
        if session.seen and self.rng.random() < REVISIT:
            return self.rng.choice(session.seen)
        pk = self._visible(session.user)
        if pk is not None:
            session.seen.append(pk)
        return pk

    # -- request kinds ---------------------------------------------------------------------

    def _read(self, session: Session) -> list[PlannedRequest]:
        pk = self._pick(session)
        if pk is None:
            return self._me(session)
        detail = self._request(DETAIL, "GET", f"/api/generations/{pk}/", session.user)
        if self.rng.random() < MEDIA_AFTER_DETAIL:
            return [detail, self._request(MEDIA, "GET", f"/api/generations/{pk}/media/", session.user)]
        return [detail]

    def _media(self, session: Session) -> list[PlannedRequest]:
        pk = self._pick(session)
        if pk is None:
            return self._me(session)
        return [self._request(MEDIA, "GET", f"/api/generations/{pk}/media/", session.user)]

    def _me(self, session: Session) -> list[PlannedRequest]:
        return [self._request(ME, "GET", "/api/me/", session.user)]

    def _batch(self, session: Session) -> list[PlannedRequest]:
        """A team feed: the team's popular generations and its newest, the same few teams per user."""
        rng = self.rng
        teams = [team for team in self.teams_of.get(session.user, []) if team in self._gen_weights]
        if not teams:
            return self._read(session)
        team = teams[0] if rng.random() < 0.7 else rng.choice(teams)
        ids: list[int | str] = list(self.world.team_generations[team][: rng.randint(5, 12)])
        ids += [name for name, _, created_team in self.created[-RECENT_NEW:] if created_team == team][-5:]
        query = ",".join(str(pk) for pk in dict.fromkeys(ids))
        return [self._request(BATCH, "GET", f"/api/generations/?ids={query}", session.user)]

    def _patch(self, session: Session) -> list[PlannedRequest]:
        """An edit of something the session saw (a viewer's edit is a 403, as it should be)."""
        pk = self._pick(session)
        if pk is None:
            return self._me(session)
        rng = self.rng
        if rng.random() < 0.7:
            body = {"prompt": f"retouched #{rng.randint(1, 10**6)}: more contrast, softer light"}
        else:
            body = {"status": rng.choice(["succeeded", "failed"])}
        return [self._request(PATCH, "PATCH", f"/api/generations/{pk}/", session.user, body)]

    def _create(self, session: Session) -> list[PlannedRequest]:
        teams = self.teams_of.get(session.user, [])
        team = self.rng.choice(teams) if teams and self.rng.random() < 0.8 else None
        name = NEW.format(len(self.created))
        self.created.append((name, session.user, team))
        session.seen.append(name)
        body = {"prompt": f"a new take #{self.rng.randint(1, 10**6)}", "team_id": team}
        return [self._request(CREATE, "POST", "/api/generations/", session.user, body, creates=len(self.created) - 1)]

    def _forbidden(self, session: Session) -> list[PlannedRequest]:
        """A popular generation of a team the user is not in (403)."""
        teams = set(self.teams_of.get(session.user, []))
        others = [team for team in self._teams[:20] if team not in teams]
        if not others:
            return self._read(session)
        team = self.rng.choice(others)
        pk = self.world.team_generations[team][0]
        if self.world.owner_of[pk] == session.user:
            return self._read(session)
        return [self._request(DETAIL, "GET", f"/api/generations/{pk}/", session.user)]

    def _missing(self, session: Session) -> list[PlannedRequest]:
        pk = self.world.max_generation_id + 1_000_000 + self.rng.randint(1, 10_000)
        return [self._request(DETAIL, "GET", f"/api/generations/{pk}/", session.user)]

    def _no_token(self, session: Session) -> list[PlannedRequest]:
        pk = self._visible(session.user) or self.world.generations[0]
        return [PlannedRequest(DETAIL, "GET", f"/api/generations/{pk}/", None)]

    def _bad_token(self, session: Session) -> list[PlannedRequest]:
        pk = self._visible(session.user) or self.world.generations[0]
        return [PlannedRequest(DETAIL, "GET", f"/api/generations/{pk}/", f"{self.rng.getrandbits(160):040x}")]


def resolve(path: str, created: Mapping[int, int], missing: int) -> str:
    """The path with each ``new:<k>`` replaced by the id the server gave the k-th creation.

    A creation that has not answered (or failed) resolves to ``missing + k``,
    an id that does not exist: the read is then a 404, as a read of something
    not yet created would be.
    """
    return NEW_ID.sub(lambda match: str(created.get(int(match.group(1)), missing + int(match.group(1)))), path)


def stream(world: World, seed: int, count: int, **options: float) -> list[PlannedRequest]:
    """``count`` requests of the model over ``world``, deterministic by ``seed``."""
    return TrafficModel(world, random.Random(seed), **options).stream(count)  # type: ignore[arg-type]
