"""Write capture, across OS processes: every write path, 0 stale reads and 0 stale allows.

Three gunicorn workers serve the example project (the fixture of
``tests/test_authz_processes.py``). Each case warms a value or an allow in
every worker's L1 (concurrent requests spread over the workers), then this
process commits a write by one path (a save of an instance however it was
obtained, every QuerySet write path, bulk paths, raw SQL, proxies, pk reuse),
and the requests that start after the commit, served by whichever workers
take them, must all see it. One case per path, so a failure names the path.
"""

from __future__ import annotations

import functools
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core import serializers
from django.db import connection, models, transaction
from django.test.utils import isolate_apps
from studio.models import ApiToken, Generation, Role, Team, TeamMembership

from tests.test_authz_processes import WORKERS, _setup, check, request, server  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

# Write capture retires on commit; another process's L1 hears it through the
# coherence channel, and read-your-writes (velro_cache.freshness) makes every
# request that starts after the commit wait for it. So the matrix is strict: no
# stale read at all after the write returned. VELRO_CAPTURE_LAG (seconds)
# tolerates stale reads that start that early, for diagnosing a run with
# READ_YOUR_WRITES off; a path capture missed stays stale for the TTL and fails
# either way.
COHERENCE_LAG = float(os.environ.get("VELRO_CAPTURE_LAG", "0"))
ROUNDS = int(os.environ.get("VELRO_CAPTURE_ROUNDS", "2"))  # each case twice: the warm allows land on different workers


def _tag() -> str:
    return f"{random.getrandbits(48):x}"


def _warm_then_after(port: int, probe: Callable[[], Any], write: Callable[[], None]) -> tuple[list[Any], list[Any]]:
    with ThreadPoolExecutor(max_workers=2 * WORKERS) as pool:
        warm = list(pool.map(lambda _: probe(), range(2 * WORKERS)))
        write()  # committed when it returns
        after = list(pool.map(lambda _: probe(), range(3 * WORKERS)))
    return warm, after


def _lagging(port: int, probe: Callable[[], Any], write: Callable[[], None], expected: Callable[[], Any]) -> tuple[list[Any], list[float]]:
    """Reads after the write, each with how long after the commit it started; then reads until COHERENCE_LAG is over.

    Returns the warm values and, for every stale read, its start after the commit (s).
    """
    with ThreadPoolExecutor(max_workers=2 * WORKERS) as pool:
        warm = list(pool.map(lambda _: probe(), range(2 * WORKERS)))
        write()  # committed when it returns
        committed = time.monotonic()
        want = expected()

        def timed(_: int) -> tuple[Any, float]:
            started = time.monotonic() - committed
            return probe(), started

        reads = list(pool.map(timed, range(3 * WORKERS)))
        while time.monotonic() - committed < 2 * COHERENCE_LAG:
            reads += list(pool.map(timed, range(WORKERS)))
    return warm, [started for value, started in reads if value != want]


# -- revocation paths: (user, generation, action, revoke) with the allow warm -------------------------
# One small function per write path, on purpose: the matrix's point is that
# each path is a case a reader can check against the list, so the
# near-identical shapes (here and in test_authz_processes.py's randomized
# revokes, which stress a few of the same paths under load) stay spelled out.


def _membership(user: User) -> TeamMembership:
    return TeamMembership.objects.get(user=user)


def r_membership_deleted():
    _, _, user, gen = _setup()
    return user, gen, "read", lambda: _membership(user).delete()


def r_membership_queryset_deleted():
    _, _, user, gen = _setup()
    return user, gen, "read", lambda: TeamMembership.objects.filter(user=user).delete()


def r_membership_raw_deleted():
    _, _, user, gen = _setup()

    def revoke():
        with connection.cursor() as cursor:
            cursor.execute("delete from studio_teammembership where user_id = %s", [user.pk])

    return user, gen, "read", revoke


def r_role_saved():
    _, _, user, gen = _setup(Role.EDITOR)

    def revoke():
        membership = _membership(user)
        membership.role = Role.VIEWER
        membership.save()

    return user, gen, "write", revoke


def r_role_built_with_pk():
    _, _, user, gen = _setup(Role.EDITOR)
    m = _membership(user)
    return user, gen, "write", lambda: TeamMembership(pk=m.pk, team_id=m.team_id, user_id=user.pk, role=Role.VIEWER).save()


def r_role_deserialized():
    _, _, user, gen = _setup(Role.EDITOR)
    m = _membership(user)
    m.role = Role.VIEWER
    fixture = serializers.serialize("json", [m])

    def revoke():
        for obj in serializers.deserialize("json", fixture):
            obj.save()

    return user, gen, "write", revoke


def r_role_refreshed_then_changed():
    _, _, user, gen = _setup(Role.EDITOR)
    other = User.objects.create(username=f"x-{_tag()}")
    m = _membership(user)
    m.user = other  # changed in memory, not saved
    m.refresh_from_db()  # back to the database's values: user is `user` again

    def revoke():
        m.role = Role.VIEWER
        m.save()

    return user, gen, "write", revoke


def r_role_queryset_update():
    _, _, user, gen = _setup(Role.EDITOR)
    return user, gen, "write", lambda: TeamMembership.objects.filter(user=user).update(role=Role.VIEWER)


def r_role_bulk_update():
    _, _, user, gen = _setup(Role.EDITOR)

    def revoke():
        m = _membership(user)
        m.role = Role.VIEWER
        TeamMembership.objects.bulk_update([m], ["role"])

    return user, gen, "write", revoke


def r_role_raw_sql():
    _, _, user, gen = _setup(Role.EDITOR)

    def revoke():
        with connection.cursor() as cursor:
            cursor.execute("UPDATE studio_teammembership SET role = 'viewer' WHERE user_id = %s", [user.pk])

    return user, gen, "write", revoke


def r_role_proxy_saved():
    _, _, user, gen = _setup(Role.EDITOR)

    def revoke():
        m = ProxyMembership.objects.get(user=user)
        m.role = Role.VIEWER
        m.save()

    return user, gen, "write", revoke


def r_membership_proxy_deleted():
    _, _, user, gen = _setup()
    return user, gen, "read", lambda: ProxyMembership.objects.get(user=user).delete()


def _new_user() -> User:
    return User.objects.create(username=f"n-{_tag()}")


def r_ownership_saved():
    _, owner, _, gen = _setup()

    def revoke():
        gen.owner = _new_user()
        gen.save()

    return owner, gen, "read", revoke


def r_ownership_built_instance():
    _, owner, _, gen = _setup()

    def revoke():
        values = {f.attname: getattr(gen, f.attname) for f in Generation._meta.concrete_fields}
        values["owner_id"] = _new_user().pk
        Generation(**values).save()

    return owner, gen, "read", revoke


def r_ownership_queryset_update():
    _, owner, _, gen = _setup()
    return owner, gen, "read", lambda: Generation.objects.filter(pk=gen.pk).update(owner=_new_user())


def r_ownership_bulk_update():
    _, owner, _, gen = _setup()

    def revoke():
        gen.owner = _new_user()
        Generation.objects.bulk_update([gen], ["owner"])

    return owner, gen, "read", revoke


def r_ownership_raw_sql():
    _, owner, _, gen = _setup()

    def revoke():
        new = _new_user()
        with connection.cursor() as cursor:
            cursor.execute(f"update studio_generation set owner_id = {new.pk} where id = {gen.pk}")

    return owner, gen, "read", revoke


def r_ownership_transferred_twice_from_stale_instances():
    """Two instances loaded while the owner was A; one moves it to B (B's allow warms), the other to C."""
    _, _, _, gen = _setup()
    first, second = Generation.objects.get(pk=gen.pk), Generation.objects.get(pk=gen.pk)
    middle = _new_user()
    first.owner = middle
    first.save()

    def revoke():
        second.owner = _new_user()
        second.save()

    return middle, gen, "read", revoke


def r_ownership_concurrent_transfers():
    """Two transactions move it at once from stale instances; whichever commits last wins, the other owner is denied."""
    _, _, _, gen = _setup()
    b, c = _new_user(), _new_user()
    first, second = Generation.objects.get(pk=gen.pk), Generation.objects.get(pk=gen.pk)
    # The allow warmed is B's; the revoke moves it to B and then to C concurrently.
    Generation.objects.filter(pk=gen.pk).update(owner=b)
    gen.refresh_from_db()

    def move(instance: Generation, owner: User, entered: threading.Barrier) -> None:
        try:
            with transaction.atomic():
                entered.wait(5)
                instance.owner = owner
                instance.save()
        finally:
            connection.close()

    def revoke():
        barrier = threading.Barrier(2)
        threads = [
            threading.Thread(target=move, args=(first, b, barrier)),
            threading.Thread(target=move, args=(second, c, barrier)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        if Generation.objects.get(pk=gen.pk).owner_id != c.pk:  # B committed last: make C's the last move
            Generation.objects.get(pk=gen.pk).__class__.objects.filter(pk=gen.pk).update(owner=c)

    return b, gen, "read", revoke


def r_team_changed_saved():
    _, _, user, gen = _setup()

    def revoke():
        gen.team = Team.objects.create(name="other", slug=f"o-{_tag()}")
        gen.save()

    return user, gen, "media", revoke


def r_team_changed_by_update():
    _, _, user, gen = _setup()
    return user, gen, "media", lambda: Generation.objects.filter(pk=gen.pk).update(team=Team.objects.create(name="o", slug=f"o-{_tag()}"))


def r_team_changed_raw_sql():
    _, _, user, gen = _setup()

    def revoke():
        with connection.cursor() as cursor:
            cursor.execute('UPDATE "studio_generation" SET "team_id" = NULL WHERE "id" = %s', [gen.pk])

    return user, gen, "media", revoke


def r_user_deactivated_saved():
    _, _, user, gen = _setup()

    def revoke():
        user.is_active = False
        user.save()

    return user, gen, "read", revoke


def r_user_deactivated_by_update():
    _, _, user, gen = _setup()
    return user, gen, "read", lambda: User.objects.filter(pk=user.pk).update(is_active=False)


def r_superuser_dropped_saved():
    _, _, user, gen = _setup(superuser=True)

    def revoke():
        user.is_superuser = False
        user.save()

    return user, gen, "read", revoke


def r_superuser_dropped_by_update():
    _, _, user, gen = _setup(superuser=True)
    return user, gen, "read", lambda: User.objects.filter(pk=user.pk).update(is_superuser=False)


def r_superuser_dropped_raw_sql():
    _, _, user, gen = _setup(superuser=True)

    def revoke():
        with connection.cursor() as cursor:
            cursor.execute("update auth_user set is_superuser = false where id = %s", [user.pk])

    return user, gen, "read", revoke


def r_pk_reused_after_delete():
    """The owner's allow on generation N; N is deleted and a new generation N of someone else's is created."""
    _, owner, _, gen = _setup()

    def revoke():
        values = {f.attname: getattr(gen, f.attname) for f in Generation._meta.concrete_fields}
        Generation.objects.filter(pk=gen.pk).delete()
        values.update(owner_id=_new_user().pk, team_id=None)
        Generation.objects.create(**values)

    return owner, gen, "read", revoke


REVOCATIONS = [value for name, value in sorted(globals().items()) if name.startswith("r_")]


@pytest.fixture
def proxies():
    """A proxy of the role source, as a project might declare (isolated: not part of the example's migrations)."""
    global ProxyMembership
    with isolate_apps("studio"):

        class ProxyMembership(TeamMembership):  # type: ignore[no-redef]
            class Meta:
                app_label = "studio"
                proxy = True

        yield


ProxyMembership: Any = None


@pytest.mark.parametrize("path", REVOCATIONS, ids=[p.__name__[2:] for p in REVOCATIONS])
def test_a_committed_revoke_is_honoured_by_every_worker(server, proxies, path):  # noqa: F811
    port, _log = server
    stale = []
    for _ in range(ROUNDS):
        user, gen, action, revoke = path()
        key = ApiToken.objects.create(user=user).key
        warm, after = _warm_then_after(port, functools.partial(check, port, key, gen.pk, action), revoke)
        assert set(warm) == {200}, warm
        stale += [status for status in after if status == 200]
    assert stale == [], f"{len(stale)} stale allows after the revoke committed"


# -- invalidation paths: (key, read, write, expected) -------------------------------------------------


def _gen_reader(port: int, key: str, gen_id: int) -> Callable[[], Any]:
    def read() -> Any:
        status, body = request(port, "GET", f"/api/generations/{gen_id}/", key)
        return body.get("prompt") if status == 200 else status

    return read


def _me_reader(port: int, key: str) -> Callable[[], Any]:
    def read() -> Any:
        status, body = request(port, "GET", "/api/me/", key)
        assert status == 200, (status, body)
        return (body["first_name"], [(t["name"], t["role"]) for t in body["teams"]])

    return read


def _generation_case(write: Callable[[Generation], None], expected: Any = "new"):
    def case(port: int):
        _, owner, _, gen = _setup()
        key = ApiToken.objects.create(user=owner).key
        return _gen_reader(port, key, gen.pk), lambda: write(gen), expected

    return case


def _raw(sql: str, params: list[Any]) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _built(gen: Generation, **changes: Any) -> Generation:
    values = {f.attname: getattr(gen, f.attname) for f in Generation._meta.concrete_fields}
    values.update(changes)
    return Generation(**values)


def _saved(instance: models.Model, **changes: Any) -> None:
    for name, value in changes.items():
        setattr(instance, name, value)
    instance.save()


def _deserialized(gen: Generation) -> None:
    gen.prompt = "new"
    for obj in serializers.deserialize("json", serializers.serialize("json", [gen])):
        obj.save()


def _refreshed(gen: Generation) -> None:
    gen.prompt = "unsaved"
    gen.refresh_from_db()
    _saved(gen, prompt="new")


def _pk_reused(gen: Generation) -> None:
    values = {f.attname: getattr(gen, f.attname) for f in Generation._meta.concrete_fields}
    gen.delete()  # clears gen.pk
    Generation.objects.create(**(values | {"prompt": "new"}))


def _proxy_saved(gen: Generation) -> None:
    _saved(ProxyGeneration.objects.get(pk=gen.pk), prompt="new")


INVALIDATIONS: dict[str, Callable[[int], Any]] = {
    "generation_saved": _generation_case(lambda g: _saved(g, prompt="new")),
    "generation_saved_update_fields": _generation_case(lambda g: (setattr(g, "prompt", "new"), g.save(update_fields=["prompt"]))),
    "generation_built_with_pk": _generation_case(lambda g: _built(g, prompt="new").save()),
    "generation_deserialized": _generation_case(_deserialized),
    "generation_refreshed_then_changed": _generation_case(_refreshed),
    "generation_queryset_update": _generation_case(lambda g: Generation.objects.filter(pk=g.pk).update(prompt="new")),
    "generation_values_update": _generation_case(lambda g: Generation.objects.filter(pk=g.pk).values("prompt").update(prompt="new")),
    "generation_bulk_update": _generation_case(lambda g: Generation.objects.bulk_update([_built(g, prompt="new")], ["prompt"])),
    "generation_update_or_create": _generation_case(lambda g: Generation.objects.update_or_create(pk=g.pk, defaults={"prompt": "new"})),
    "generation_raw_sql": _generation_case(lambda g: _raw("UPDATE studio_generation SET prompt = 'new' WHERE id = %s", [g.pk])),
    "generation_raw_sql_quoted": _generation_case(
        lambda g: _raw('update "studio_generation" set "prompt" = %s where "id" = %s', ["new", g.pk])),
    "generation_deleted": _generation_case(lambda g: g.delete(), expected=404),
    "generation_queryset_deleted": _generation_case(lambda g: Generation.objects.filter(pk=g.pk).delete(), expected=404),
    "generation_raw_deleted": _generation_case(lambda g: _raw("DELETE FROM studio_generation WHERE id = %s", [g.pk]), expected=404),
    "generation_pk_reused": _generation_case(_pk_reused),
    "generation_proxy_saved": _generation_case(_proxy_saved),
    "generation_proxy_deleted": _generation_case(lambda g: ProxyGeneration.objects.get(pk=g.pk).delete(), expected=404),
}


def _me_case(write: Callable[[User, TeamMembership], None], expected: Callable[[User, TeamMembership], Any]):
    def case(port: int):
        team, _, user, _ = _setup(Role.EDITOR)
        key = ApiToken.objects.create(user=user).key
        membership = _membership(user)
        return _me_reader(port, key), lambda: write(user, membership), lambda: expected(user, membership)

    return case


def _roles_now(user: User, membership: TeamMembership) -> Any:
    user = User.objects.get(pk=user.pk)
    teams = TeamMembership.objects.filter(user=user).select_related("team").order_by("team__name")
    return (user.first_name, [(m.team.name, m.role) for m in teams])


ME_CASES: dict[str, Callable[[int], Any]] = {
    "membership_saved": _me_case(lambda u, m: _saved(m, role=Role.VIEWER), _roles_now),
    "membership_built_with_pk": _me_case(
        lambda u, m: TeamMembership(pk=m.pk, team_id=m.team_id, user_id=u.pk, role=Role.VIEWER).save(), _roles_now),
    "membership_queryset_update": _me_case(lambda u, m: TeamMembership.objects.filter(pk=m.pk).update(role=Role.VIEWER), _roles_now),
    "membership_bulk_update": _me_case(lambda u, m: TeamMembership.objects.bulk_update([_saved_copy(m)], ["role"]), _roles_now),
    "membership_raw_sql": _me_case(lambda u, m: _raw("update studio_teammembership set role='viewer' where id=%s", [m.pk]), _roles_now),
    "membership_bulk_create": _me_case(
        lambda u, m: TeamMembership.objects.bulk_create([TeamMembership(team=Team.objects.create(name="b", slug=f"b-{_tag()}"), user=u)]),
        _roles_now),
    "membership_get_or_create": _me_case(
        lambda u, m: TeamMembership.objects.get_or_create(team=Team.objects.create(name="c", slug=f"c-{_tag()}"), user=u), _roles_now),
    "membership_raw_insert": _me_case(
        lambda u, m: _raw("insert into studio_teammembership (team_id, user_id, role, created_at) values (%s, %s, 'owner', now())",
                          [Team.objects.create(name="d", slug=f"d-{_tag()}").pk, u.pk]), _roles_now),
    "membership_team_deleted": _me_case(lambda u, m: Team.objects.filter(pk=m.team_id).delete(), _roles_now),
    "membership_proxy_saved": _me_case(lambda u, m: _saved(ProxyMembershipForMe.objects.get(pk=m.pk), role=Role.VIEWER), _roles_now),
    "team_renamed_by_update": _me_case(lambda u, m: Team.objects.filter(pk=m.team_id).update(name="renamed"), _roles_now),
    "team_renamed_raw_sql": _me_case(lambda u, m: _raw("update studio_team set name = 'renamed' where id = %s", [m.team_id]), _roles_now),
    "user_renamed_by_update": _me_case(lambda u, m: User.objects.filter(pk=u.pk).update(first_name="new"), _roles_now),
    "user_renamed_raw_sql": _me_case(lambda u, m: _raw("update auth_user set first_name = 'raw' where id = %s", [u.pk]), _roles_now),
}


def _saved_copy(m: TeamMembership) -> TeamMembership:
    m.role = Role.VIEWER
    return m


ProxyGeneration: Any = None
ProxyMembershipForMe: Any = None


@pytest.fixture
def example_proxies():
    global ProxyGeneration, ProxyMembershipForMe
    with isolate_apps("studio"):

        class ProxyGeneration(Generation):  # type: ignore[no-redef]
            class Meta:
                app_label = "studio"
                proxy = True

        class ProxyMembershipForMe(TeamMembership):  # type: ignore[no-redef]
            class Meta:
                app_label = "studio"
                proxy = True

        yield


@pytest.mark.parametrize("name", sorted(INVALIDATIONS))
def test_a_committed_write_is_read_by_every_worker(server, example_proxies, name):  # noqa: F811
    port, _log = server
    stale = []
    for _ in range(ROUNDS):
        read, write, expected = INVALIDATIONS[name](port)
        warm, late = _lagging(port, read, write, functools.partial(lambda value: value, expected))
        assert set(warm) == {"p"}, warm
        stale += late
    assert [t for t in stale if t >= COHERENCE_LAG] == [], f"stale reads that started this long after the commit: {stale}"


@pytest.mark.parametrize("name", sorted(ME_CASES))
def test_a_committed_write_reaches_every_workers_profile(server, example_proxies, name):  # noqa: F811
    port, _log = server
    stale = []
    for _ in range(ROUNDS):
        read, write, expected = ME_CASES[name](port)
        warm, late = _lagging(port, read, write, expected)
        assert len(set(map(repr, warm))) == 1, warm
        stale += late
    assert [t for t in stale if t >= COHERENCE_LAG] == [], f"stale reads that started this long after the commit: {stale}"


def test_two_stale_instances_moving_one_membership(server):  # noqa: F811
    """Loaded at A; one instance moves it to B (B's list warms with it), the other, still at A, to C: B must lose it."""
    port, _log = server
    team, _, a, _ = _setup()
    b, c = _new_user(), _new_user()
    first, second = _membership(a), _membership(a)
    _saved(first, user=b)
    read = _me_reader(port, ApiToken.objects.create(user=b).key)
    warm, late = _lagging(port, read, lambda: _saved(second, user=c), lambda: ("", []))
    assert all(value[1] == [(team.name, Role.VIEWER)] for value in warm), warm
    assert [t for t in late if t >= COHERENCE_LAG] == [], late
