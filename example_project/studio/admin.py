"""Admin for the Velro domain, so the demo data can be browsed next to the cache dashboard."""

from django.contrib import admin

from .models import ApiToken, Generation, SystemConfig, Team, TeamMembership


class TeamMembershipInline(admin.TabularInline):
    model = TeamMembership
    raw_id_fields = ["user"]
    extra = 0


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "created_at"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [TeamMembershipInline]


@admin.register(TeamMembership)
class TeamMembershipAdmin(admin.ModelAdmin):
    list_display = ["team", "user", "role", "created_at"]
    list_filter = ["role", "team"]
    search_fields = ["user__username", "team__name"]
    raw_id_fields = ["user", "team"]


@admin.register(Generation)
class GenerationAdmin(admin.ModelAdmin):
    list_display = ["id", "owner", "team", "status", "media_type", "model_name", "created_at"]
    list_filter = ["status", "media_type", "model_name"]
    search_fields = ["prompt", "owner__username"]
    raw_id_fields = ["owner", "team"]
    date_hierarchy = "created_at"
    list_select_related = ["owner", "team"]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["user", "short_key", "created_at", "last_used_at"]
    search_fields = ["user__username"]
    raw_id_fields = ["user"]
    readonly_fields = ["created_at", "last_used_at"]

    @admin.display(description="key")
    def short_key(self, obj: ApiToken) -> str:
        # The full key is a credential; the list page shows only a prefix.
        return f"{obj.key[:6]}…"


@admin.register(SystemConfig)
class SystemConfigAdmin(admin.ModelAdmin):
    list_display = ["key", "value", "updated_at"]
    search_fields = ["key"]
