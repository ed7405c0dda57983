"""A realistic, reproducible Velro data set for the demo and benchmarks.

Seeding tops up to the requested sizes instead of duplicating, so running it twice
is harmless; names are deterministic (``velro_user_0001``, ``team-01``) which is
what makes that possible. Passwords are unusable for the generated users because
hashing hundreds of them would dominate the run time; they authenticate with
their API tokens.

Bulk inserts send no signals, so they go through velro-cache's ``invalidating``
queryset: once the seed commits, whatever the cache held about the rows it
created is retired (the flush's deletes send signals and need nothing).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.db import transaction
from django.utils import timezone

from velro_cache import invalidating

from .models import ApiToken, Generation, Role, SystemConfig, Team, TeamMembership

BATCH_SIZE = 1000
USER_PREFIX = "velro_user_"
ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "admin"

SUBJECTS = [
    "a lighthouse", "a red fox", "an astronaut", "a koi pond", "a neon city",
    "a vintage car", "a mountain cabin", "a jazz trio", "a paper crane", "a desert caravan",
    "a glass greenhouse", "a sleeping dragon", "a street market", "a robot gardener",
]
STYLES = [
    "in watercolor", "as a 35mm photo", "in the style of a 90s anime", "as a clay render",
    "in isometric pixel art", "as a charcoal sketch", "with cinematic lighting",
    "as a blueprint", "in ukiyo-e style", "as a low-poly scene",
]
MOODS = ["at golden hour", "in heavy rain", "under northern lights", "at dawn",
         "in thick fog", "on a snowy night", "in midsummer"]
MODELS = {
    Generation.MediaType.IMAGE: ["velro-image-v3", "velro-image-v3-turbo", "velro-image-v2"],
    Generation.MediaType.VIDEO: ["velro-video-v1", "velro-video-v1-long"],
    Generation.MediaType.AUDIO: ["velro-audio-v2"],
}
SIZES = {
    Generation.MediaType.IMAGE: [(1024, 1024), (1344, 768), (768, 1344), (2048, 2048)],
    Generation.MediaType.VIDEO: [(1280, 720), (1920, 1080), (720, 1280)],
    Generation.MediaType.AUDIO: [(0, 0)],
}
EXTENSIONS = {"image": "png", "video": "mp4", "audio": "mp3"}
SYSTEM_CONFIG = {
    "api.batch_max_ids": 100,
    "media.url_ttl_seconds": 900,
    "generation.default_model": "velro-image-v3",
    "features": {"video": True, "audio": True, "team_sharing": True},
    "limits.generations_per_day": {"free": 50, "pro": 1000},
}


@dataclass
class SeedCounts:
    users: int = 0
    teams: int = 0
    memberships: int = 0
    tokens: int = 0
    generations: int = 0
    configs: int = 0


def flush() -> None:
    """Delete the seeded data (and only it), so a new seed starts from nothing."""
    with transaction.atomic():
        Generation.objects.all().delete()
        TeamMembership.objects.all().delete()
        ApiToken.objects.all().delete()
        Team.objects.all().delete()
        SystemConfig.objects.filter(key__in=SYSTEM_CONFIG).delete()
        get_user_model().objects.filter(username__startswith=USER_PREFIX).delete()


def seed(users: int, teams: int, generations: int, rng: random.Random) -> SeedCounts:
    counts = SeedCounts()
    with transaction.atomic():
        counts.users = _ensure_users(users)
        counts.teams = _ensure_teams(teams)
        user_ids = list(
            get_user_model().objects.filter(username__startswith=USER_PREFIX)
            .order_by("username").values_list("pk", flat=True)[:users]
        )
        team_ids = list(Team.objects.order_by("slug").values_list("pk", flat=True)[:teams])
        counts.memberships = _ensure_memberships(user_ids, team_ids, rng)
        counts.tokens = _ensure_tokens()
        counts.generations = _ensure_generations(generations, user_ids, rng)
        counts.configs = _ensure_system_config()
    return counts


def _ensure_users(total: int) -> int:
    """Create the missing users plus the demo superuser (whose password is printed)."""
    user_model = get_user_model()
    existing = set(
        user_model.objects.filter(username__startswith=USER_PREFIX).values_list("username", flat=True)
    )
    new = []
    for n in range(1, total + 1):
        username = f"{USER_PREFIX}{n:04d}"
        if username not in existing:
            user = user_model(username=username, email=f"{username}@velro.example",
                              first_name="Velro", last_name=f"User {n}")
            user.set_unusable_password()
            new.append(user)
    invalidating(user_model.objects).bulk_create(new, batch_size=BATCH_SIZE)
    if not user_model.objects.filter(username=ADMIN_USERNAME).exists():
        user_model.objects.create(
            username=ADMIN_USERNAME, email="admin@velro.example", is_staff=True,
            is_superuser=True, password=make_password(ADMIN_PASSWORD),
        )
        return len(new) + 1
    return len(new)


def _ensure_teams(total: int) -> int:
    existing = set(Team.objects.values_list("slug", flat=True))
    now = timezone.now()
    new = [
        Team(name=f"Studio {n:02d}", slug=f"team-{n:02d}", created_at=now - timedelta(days=30 + n))
        for n in range(1, total + 1)
        if f"team-{n:02d}" not in existing
    ]
    invalidating(Team.objects).bulk_create(new, batch_size=BATCH_SIZE)
    return len(new)


def _ensure_memberships(user_ids: list[int], team_ids: list[int], rng: random.Random) -> int:
    """Each user joins one to three teams; every team gets one owner, then mostly
    viewers and editors, which is the mix authorization has to get right."""
    if not team_ids:
        return 0
    existing = set(TeamMembership.objects.values_list("team_id", "user_id"))
    wanted: dict[tuple[int, int], str] = {}
    for team_id, owner_id in zip(team_ids, rng.sample(user_ids, min(len(user_ids), len(team_ids)))):
        wanted[(team_id, owner_id)] = Role.OWNER
    for user_id in user_ids:
        for team_id in rng.sample(team_ids, min(len(team_ids), rng.choice([1, 1, 2, 3]))):
            role = rng.choices([Role.OWNER, Role.EDITOR, Role.VIEWER], weights=[1, 4, 5])[0]
            wanted.setdefault((team_id, user_id), role)
    new = [
        TeamMembership(team_id=team_id, user_id=user_id, role=role)
        for (team_id, user_id), role in wanted.items()
        if (team_id, user_id) not in existing
    ]
    invalidating(TeamMembership.objects).bulk_create(new, batch_size=BATCH_SIZE)
    return len(new)


def _ensure_tokens() -> int:
    """One API token for every user that has none (including the admin)."""
    user_ids = get_user_model().objects.filter(api_tokens__isnull=True).values_list("pk", flat=True)
    new = [ApiToken(user_id=pk, key=ApiToken.generate_key()) for pk in user_ids]
    invalidating(ApiToken.objects).bulk_create(new, batch_size=BATCH_SIZE)
    return len(new)


def _ensure_generations(total: int, user_ids: list[int], rng: random.Random) -> int:
    """Top up to ``total`` generations over the last 7 days, recent days busier,
    a few power users owning most of them, most shared with one of the owner's teams."""
    missing = total - Generation.objects.count()
    if missing <= 0 or not user_ids:
        return 0
    teams_of: dict[int, list[int]] = {}
    for user_id, team_id in TeamMembership.objects.filter(user_id__in=user_ids).values_list(
        "user_id", "team_id"
    ):
        teams_of.setdefault(user_id, []).append(team_id)
    activity = [1.0 / (rank + 1) ** 0.8 for rank in range(len(user_ids))]
    owners = rng.choices(user_ids, weights=activity, k=missing)
    now = timezone.now()
    batch = [_generation(owner, teams_of.get(owner, []), now, rng) for owner in owners]
    invalidating(Generation.objects).bulk_create(batch, batch_size=BATCH_SIZE)
    return len(batch)


def _generation(owner_id: int, team_ids: list[int], now: datetime, rng: random.Random) -> Generation:
    media_type = rng.choices(list(MODELS), weights=[80, 15, 5])[0]
    width, height = rng.choice(SIZES[media_type])
    status = rng.choices(
        list(Generation.Status.values), weights=[3, 3, 88, 6]
    )[0]
    name = uuid.UUID(int=rng.getrandbits(128)).hex
    ext = EXTENSIONS[media_type]
    # Recent days are busier: age skews towards zero within 7 days.
    age = timedelta(seconds=7 * 86400 * rng.random() ** 1.6)
    return Generation(
        owner_id=owner_id,
        team_id=rng.choice(team_ids) if team_ids and rng.random() < 0.7 else None,
        prompt=f"{rng.choice(SUBJECTS)} {rng.choice(STYLES)} {rng.choice(MOODS)}",
        status=status,
        model_name=rng.choice(MODELS[media_type]),
        media_url=f"https://cdn.velro.example/media/{name}.{ext}" if status == "succeeded" else "",
        thumbnail_url=f"https://cdn.velro.example/thumbs/{name}.webp" if status == "succeeded" else "",
        media_type=media_type,
        width=width,
        height=height,
        duration_ms=rng.randint(2_000, 60_000) if media_type != "image" else None,
        created_at=now - age,
    )


def _ensure_system_config() -> int:
    created = 0
    for key, value in SYSTEM_CONFIG.items():
        _, was_created = SystemConfig.objects.get_or_create(key=key, defaults={"value": value})
        created += was_created
    return created
