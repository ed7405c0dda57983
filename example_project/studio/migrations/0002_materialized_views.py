"""The Velro materialized views (L3) and the access log behind one of them.

The unmanaged models give Django the views' shape; CreateMaterializedView
creates them: native materialized views on PostgreSQL, the emulation on
SQLite. Each view's SQL is spelled once; only "the last N hours" differs by
vendor. The windows are evaluated at refresh time, so a view's "last 24 h"
is as old as its last refresh (see velro_cache.models.ViewRefresh).
"""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models

from velro_cache.db.operations import CreateMaterializedView

SINCE = {
    "postgresql": "now() - interval '{hours} hours'",
    "sqlite": "strftime('%Y-%m-%d %H:%M:%f', 'now', '-{hours} hours')",
}


def per_vendor(select: str) -> dict[str, str]:
    return {
        vendor: select.format(since_24h=since.format(hours=24), since_48h=since.format(hours=48))
        for vendor, since in SINCE.items()
    }


# Activity = API requests logged for the user + generations they created
# (through the API) + a token used, all in the last 24 h.
ACTIVE_USERS_SQL = per_vendor("""
    WITH activity AS (
        SELECT owner_id AS user_id, 0 AS requests, 1 AS created, created_at AS at
          FROM studio_generation
         WHERE created_at >= {since_24h}
        UNION ALL
        SELECT user_id, 1, 0, accessed_at
          FROM studio_generationaccess
         WHERE accessed_at >= {since_24h} AND user_id IS NOT NULL
        UNION ALL
        SELECT user_id, 0, 0, last_used_at
          FROM studio_apitoken
         WHERE last_used_at >= {since_24h}
    )
    SELECT a.user_id,
           u.username,
           SUM(a.requests) AS requests_24h,
           SUM(a.created) AS generations_24h,
           SUM(a.requests) + SUM(a.created) AS activity,
           MAX(a.at) AS last_active_at
      FROM activity a
      JOIN auth_user u ON u.id = a.user_id
     WHERE u.is_active
     GROUP BY a.user_id, u.username
""")

RECENT_GENERATIONS_SQL = per_vendor("""
    SELECT id, owner_id, team_id, prompt, status, model_name, media_url, thumbnail_url,
           media_type, width, height, duration_ms, created_at, updated_at
      FROM studio_generation
     WHERE created_at >= {since_48h}
""")

ACTIVE_MEMBERSHIPS_SQL = """
    SELECT m.id, m.team_id, m.user_id, m.role, t.name AS team_name, t.slug AS team_slug,
           m.created_at
      FROM studio_teammembership m
      JOIN studio_team t ON t.id = m.team_id
      JOIN auth_user u ON u.id = m.user_id
     WHERE u.is_active
"""

ACCESS_COUNTS_SQL = per_vendor("""
    SELECT generation_id,
           COUNT(*) AS access_count,
           SUM(CASE WHEN accessed_at >= {since_24h} THEN 1 ELSE 0 END) AS accesses_24h,
           COUNT(DISTINCT user_id) AS unique_users,
           MAX(accessed_at) AS last_accessed_at
      FROM studio_generationaccess
     GROUP BY generation_id
""")


class Migration(migrations.Migration):

    dependencies = [
        ('auth', '0012_alter_user_first_name_max_length'),
        ('studio', '0001_initial'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='ActiveMembership',
            fields=[
                ('id', models.BigIntegerField(primary_key=True, serialize=False)),
                ('role', models.CharField(choices=[('owner', 'Owner'), ('editor', 'Editor'), ('viewer', 'Viewer')], max_length=16)),
                ('team_name', models.CharField(max_length=120)),
                ('team_slug', models.CharField(max_length=120)),
                ('created_at', models.DateTimeField()),
            ],
            options={
                'db_table': 'studio_active_memberships',
                'ordering': ['user_id', 'team_name'],
                'managed': False,
            },
        ),
        migrations.CreateModel(
            name='ActiveUser',
            fields=[
                ('user', models.OneToOneField(db_constraint=False, on_delete=django.db.models.deletion.DO_NOTHING, primary_key=True, related_name='+', serialize=False, to=settings.AUTH_USER_MODEL)),
                ('username', models.CharField(max_length=150)),
                ('requests_24h', models.BigIntegerField()),
                ('generations_24h', models.BigIntegerField()),
                ('activity', models.BigIntegerField()),
                ('last_active_at', models.DateTimeField(null=True)),
            ],
            options={
                'db_table': 'studio_active_users_24h',
                'ordering': ['-activity', 'user_id'],
                'managed': False,
            },
        ),
        migrations.CreateModel(
            name='GenerationAccessCount',
            fields=[
                ('generation', models.OneToOneField(db_constraint=False, on_delete=django.db.models.deletion.DO_NOTHING, primary_key=True, related_name='+', serialize=False, to='studio.generation')),
                ('access_count', models.BigIntegerField()),
                ('accesses_24h', models.BigIntegerField()),
                ('unique_users', models.BigIntegerField()),
                ('last_accessed_at', models.DateTimeField(null=True)),
            ],
            options={
                'db_table': 'studio_generation_access_counts',
                'ordering': ['-access_count', 'generation_id'],
                'managed': False,
            },
        ),
        migrations.CreateModel(
            name='RecentGeneration',
            fields=[
                ('id', models.BigIntegerField(primary_key=True, serialize=False)),
                ('prompt', models.TextField()),
                ('status', models.CharField(choices=[('queued', 'Queued'), ('running', 'Running'), ('succeeded', 'Succeeded'), ('failed', 'Failed')], max_length=16)),
                ('model_name', models.CharField(max_length=64)),
                ('media_url', models.CharField(max_length=500)),
                ('thumbnail_url', models.CharField(max_length=500)),
                ('media_type', models.CharField(choices=[('image', 'Image'), ('video', 'Video'), ('audio', 'Audio')], max_length=16)),
                ('width', models.IntegerField()),
                ('height', models.IntegerField()),
                ('duration_ms', models.IntegerField(null=True)),
                ('created_at', models.DateTimeField()),
                ('updated_at', models.DateTimeField()),
            ],
            options={
                'db_table': 'studio_recent_generations_48h',
                'ordering': ['-created_at', '-id'],
                'managed': False,
            },
        ),
        migrations.CreateModel(
            name='GenerationAccess',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('kind', models.CharField(choices=[('read', 'Read'), ('media', 'Media')], default='read', max_length=8)),
                ('accessed_at', models.DateTimeField(default=django.utils.timezone.now)),
                ('generation', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='accesses', to='studio.generation')),
                ('user', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='generation_accesses', to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'indexes': [models.Index(fields=['accessed_at'], name='studio_access_recent'), models.Index(fields=['generation', 'accessed_at'], name='studio_access_generation')],
            },
        ),
        CreateMaterializedView(
            name="studio_active_users_24h",
            sql=ACTIVE_USERS_SQL,
            unique_index=["user_id"],
            indexes=[["-activity", "user_id"]],
        ),
        CreateMaterializedView(
            name="studio_recent_generations_48h",
            sql=RECENT_GENERATIONS_SQL,
            unique_index=["id"],
            indexes=[["-created_at", "-id"], ["owner_id", "-created_at"]],
        ),
        CreateMaterializedView(
            name="studio_active_memberships",
            sql=ACTIVE_MEMBERSHIPS_SQL,
            unique_index=["id"],
            indexes=[["user_id"], ["team_id"]],
        ),
        CreateMaterializedView(
            name="studio_generation_access_counts",
            sql=ACCESS_COUNTS_SQL,
            unique_index=["generation_id"],
            indexes=[["-access_count", "generation_id"]],
        ),
    ]
