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
