"""The admin side of velro-cache: the dashboard at ``/admin/velro_cache/dashboard/``.

It is the changelist URL of the table-less ``Dashboard`` model, so it sits on
the admin index under "Velro cache" and behind the admin's login like any
model page. Viewing needs staff and ``velro_cache.view_dashboard``; the actions
(POST, CSRF, a confirmation page, an admin log entry) need
``velro_cache.run_dashboard_actions`` as well. A staff user without the
permission gets a 403; anyone else the admin's login.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.views.decorators.http import require_POST

from .dashboard import actions
from .dashboard.data import dashboard_context
from .dashboard.models import ACTION_PERMISSION, VIEW_PERMISSION, Dashboard

LIVE_REFRESH_SECONDS = 5


def can_view(request: HttpRequest) -> bool:
    user = request.user
    return bool(user.is_active and user.is_staff and user.has_perm(VIEW_PERMISSION))


def can_act(request: HttpRequest) -> bool:
    return can_view(request) and request.user.has_perm(ACTION_PERMISSION)


@admin.register(Dashboard)
class DashboardAdmin(admin.ModelAdmin):
    """No add, change or delete: one page of figures and a few actions."""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return can_view(request)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return can_view(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        return [
            path("", wrap(self.dashboard_view), name="velro_cache_dashboard_changelist"),
            path("live/", wrap(self.live_view), name="velro_cache_dashboard_live"),
            path("action/", wrap(self.action_view), name="velro_cache_dashboard_action"),
        ]

    def _context(self, request: HttpRequest) -> dict[str, Any]:
        return {
            **self.admin_site.each_context(request),
            **dashboard_context(),
            "title": "Velro cache dashboard",
            "opts": self.model._meta,
            "can_act": can_act(request),
            "actions_available": list(actions.ACTIONS.values()),
            "refresh_seconds": LIVE_REFRESH_SECONDS,
        }

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        if not can_view(request):
            raise PermissionDenied
        return TemplateResponse(request, "velro_cache/dashboard.html", self._context(request))

    def live_view(self, request: HttpRequest) -> HttpResponse:
        """The figures alone, for the page's script to swap in without a reload."""
        if not can_view(request):
            raise PermissionDenied
        return TemplateResponse(request, "velro_cache/dashboard_live.html", self._context(request))

    def action_view(self, request: HttpRequest) -> HttpResponse:
        return require_POST(self._action)(request)

    def _action(self, request: HttpRequest) -> HttpResponse:
        if not can_act(request):
            raise PermissionDenied
        name, target = request.POST.get("action", ""), request.POST.get("target", "").strip()
        back = HttpResponseRedirect(reverse("admin:velro_cache_dashboard_changelist"))
        checked = actions.validate(name, target)
        if not checked.ok:
            messages.error(request, checked.message)
            return back
        if request.POST.get("confirmed") != "yes":
            context = {**self.admin_site.each_context(request), "title": "Are you sure?", "opts": self.model._meta}
            context.update(action=actions.ACTIONS[name], target=target)
            return TemplateResponse(request, "velro_cache/dashboard_confirm.html", context)
        outcome = actions.run(name, target)
        if outcome.ok:
            self._log(request, outcome.message)
            messages.success(request, outcome.message)
        else:
            messages.error(request, outcome.message)
        return back

    def _log(self, request: HttpRequest, message: str) -> None:
        """An admin log entry ("Recent actions"), as for any change made in the admin."""
        LogEntry.objects.create(
            user_id=request.user.pk,
            content_type=ContentType.objects.get_for_model(Dashboard, for_concrete_model=False),
            object_id="",
            object_repr="velro-cache dashboard",
            action_flag=CHANGE,
            change_message=message,
        )
