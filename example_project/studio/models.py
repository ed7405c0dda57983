"""The Velro domain: teams, their members, AI generations, API tokens, settings.

The models stay plain on purpose: caching, invalidation and authorization are
layered on by velro-cache, and the example has to show that no model needs to
change shape for it.
"""

from __future__ import annotations

import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone


class Team(models.Model):
    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=120, unique=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    EDITOR = "editor", "Editor"
    VIEWER = "viewer", "Viewer"


class TeamMembership(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="team_memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "user"], name="studio_unique_team_member")
        ]

    def __str__(self) -> str:
        return f"{self.user_id} in {self.team_id} as {self.role}"


class Generation(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    class MediaType(models.TextChoices):
        IMAGE = "image", "Image"
        VIDEO = "video", "Video"
        AUDIO = "audio", "Audio"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="generations"
    )
    team = models.ForeignKey(
        Team, on_delete=models.SET_NULL, null=True, blank=True, related_name="generations"
    )
    prompt = models.TextField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    model_name = models.CharField(max_length=64)
    media_url = models.URLField(max_length=500, blank=True)
    thumbnail_url = models.URLField(max_length=500, blank=True)
    media_type = models.CharField(
        max_length=16, choices=MediaType.choices, default=MediaType.IMAGE
    )
    width = models.PositiveIntegerField(default=0)
    height = models.PositiveIntegerField(default=0)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # Feeds ("my recent generations", "my team's recent generations")
            # and warming ("most recent of the last 48 h") read by these.
            models.Index(fields=["owner", "-created_at"], name="studio_gen_owner_recent"),
            models.Index(fields=["team", "-created_at"], name="studio_gen_team_recent"),
            models.Index(fields=["-created_at"], name="studio_gen_recent"),
        ]

    def __str__(self) -> str:
        return f"Generation {self.pk} ({self.status})"


class ApiToken(models.Model):
    KEY_LENGTH = 40

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    key = models.CharField(
        max_length=KEY_LENGTH, unique=True, blank=True, help_text="Left empty: generated."
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"Token for {self.user_id} ({self.key[:6]}…)"

    @classmethod
    def generate_key(cls) -> str:
        """A 160-bit random key from `secrets`, so tokens cannot be guessed."""
        return secrets.token_hex(cls.KEY_LENGTH // 2)

    def save(self, *args, **kwargs) -> None:
        if not self.key:
            self.key = self.generate_key()
        super().save(*args, **kwargs)


class SystemConfig(models.Model):
    key = models.CharField(max_length=100, unique=True)
    value = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "system config entry"
        verbose_name_plural = "system config"

    def __str__(self) -> str:
        return self.key


# --- Materialized views (L3) ---
# Read-only models over the materialized views created by
# migrations/0002_materialized_views.py (refreshed as declared in
# studio/materialized.py). Warming and the dashboard read these instead of
# scanning the live tables. Relations use DO_NOTHING and no constraint: a view
# row is derived data, deleting a user must never try to delete it.

from velro_cache.db.models import MaterializedView  # noqa: E402


class GenerationAccess(models.Model):
    """One API access to a generation: the raw events behind the access counts."""

    class Kind(models.TextChoices):
        READ = "read", "Read"
        MEDIA = "media", "Media"

    generation = models.ForeignKey(Generation, on_delete=models.CASCADE, related_name="accesses")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
        related_name="generation_accesses",
    )
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.READ)
    accessed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(fields=["accessed_at"], name="studio_access_recent"),
            models.Index(fields=["generation", "accessed_at"], name="studio_access_generation"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} of {self.generation_id} by {self.user_id}"


def _view_relation(to: str | type[models.Model], **kwargs) -> models.ForeignKey:
    return models.ForeignKey(
        to, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+", **kwargs
    )


class ActiveUser(MaterializedView):
    """Users with API activity in the last 24 h (at refresh time), most active first."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, primary_key=True, on_delete=models.DO_NOTHING,
        db_constraint=False, related_name="+",
    )
    username = models.CharField(max_length=150)
    requests_24h = models.BigIntegerField()
    generations_24h = models.BigIntegerField()
    activity = models.BigIntegerField()
    last_active_at = models.DateTimeField(null=True)

    class Meta:
        db_table = "studio_active_users_24h"
        ordering = ["-activity", "user_id"]


class RecentGeneration(MaterializedView):
    """Generations created in the last 48 h (at refresh time), with the fields the API caches."""

    id = models.BigIntegerField(primary_key=True)
    owner = _view_relation(settings.AUTH_USER_MODEL)
    team = _view_relation(Team, null=True)
    prompt = models.TextField()
    status = models.CharField(max_length=16, choices=Generation.Status.choices)
    model_name = models.CharField(max_length=64)
    media_url = models.CharField(max_length=500)
    thumbnail_url = models.CharField(max_length=500)
    media_type = models.CharField(max_length=16, choices=Generation.MediaType.choices)
    width = models.IntegerField()
    height = models.IntegerField()
    duration_ms = models.IntegerField(null=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        db_table = "studio_recent_generations_48h"
        ordering = ["-created_at", "-id"]


class ActiveMembership(MaterializedView):
    """Team memberships of active users, with the team's name and slug joined in."""

    id = models.BigIntegerField(primary_key=True)
    team = _view_relation(Team)
    user = _view_relation(settings.AUTH_USER_MODEL)
    role = models.CharField(max_length=16, choices=Role.choices)
    team_name = models.CharField(max_length=120)
    team_slug = models.CharField(max_length=120)
    created_at = models.DateTimeField()

    class Meta:
        db_table = "studio_active_memberships"
        ordering = ["user_id", "team_name"]


class GenerationAccessCount(MaterializedView):
    """Accesses per generation: all time, in the last 24 h, distinct users, latest."""

    generation = models.OneToOneField(
        Generation, primary_key=True, on_delete=models.DO_NOTHING, db_constraint=False,
        related_name="+",
    )
    access_count = models.BigIntegerField()
    accesses_24h = models.BigIntegerField()
    unique_users = models.BigIntegerField()
    last_accessed_at = models.DateTimeField(null=True)

    class Meta:
        db_table = "studio_generation_access_counts"
        ordering = ["-access_count", "generation_id"]
