"""`manage.py velro_seed`: load the demo's Velro data set (idempotent; --flush to restart)."""

from __future__ import annotations

import random
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from studio import seed
from studio.models import ApiToken, Generation, SystemConfig, Team, TeamMembership
from velro_cache.db.refresh import refresh_views


class Command(BaseCommand):
    help = "Seed a realistic Velro data set: users, teams, memberships, tokens, generations."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--users", type=int, default=200)
        parser.add_argument("--teams", type=int, default=20)
        parser.add_argument("--generations", type=int, default=5000)
        parser.add_argument("--seed", type=int, default=42, help="random seed (reproducible data)")
        parser.add_argument("--flush", action="store_true", help="delete the seeded data first")

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.perf_counter()
        if options["flush"]:
            seed.flush()
            self.stdout.write("Flushed the previous data set.")
        created = seed.seed(
            users=options["users"],
            teams=options["teams"],
            generations=options["generations"],
            rng=random.Random(options["seed"]),
        )
        elapsed = time.perf_counter() - started
        self.stdout.write(
            f"Created {created.users} users, {created.teams} teams, "
            f"{created.memberships} memberships, {created.tokens} API tokens, "
            f"{created.generations} generations, {created.configs} config rows "
            f"in {elapsed:.1f} s."
        )
        self.stdout.write(
            f"Data set now: {Team.objects.count()} teams, {TeamMembership.objects.count()} "
            f"memberships, {ApiToken.objects.count()} tokens, {Generation.objects.count()} "
            f"generations, {SystemConfig.objects.count()} config rows."
        )
        # Bulk inserts send no signals, so the views built from these tables
        # are refreshed here, once, instead of after each row.
        for result in refresh_views():
            self.stdout.write(f"Refreshed {result.describe()}")
        self.stdout.write(
            self.style.SUCCESS(
                f"Admin login: {seed.ADMIN_USERNAME} / {seed.ADMIN_PASSWORD} (local demo only)."
            )
        )
