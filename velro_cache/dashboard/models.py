"""The dashboard's permissions, carried by a model without a table.

An unmanaged model gives the admin its URL (``/admin/velro_cache/dashboard/``),
its entry on the admin index and two ordinary permissions that can be granted
to users and groups: viewing, and running the actions, kept apart so an
on-call viewer cannot retire a namespace.
"""

from __future__ import annotations

from django.db import models


class Dashboard(models.Model):
    class Meta:
        managed = False
        default_permissions = ()
        permissions = [
            ("view_dashboard", "Can view the velro-cache dashboard"),
            ("run_dashboard_actions", "Can run velro-cache dashboard actions (invalidate, refresh views)"),
        ]
        verbose_name = "dashboard"
        verbose_name_plural = "dashboard"

    def __str__(self) -> str:
        return "velro-cache dashboard"


VIEW_PERMISSION = "velro_cache.view_dashboard"
ACTION_PERMISSION = "velro_cache.run_dashboard_actions"
