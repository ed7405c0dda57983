"""``CachedPermissionBackend``: ``user.has_perm("studio.change_generation", obj)`` from the cached decisions.

Object permissions only: a codename's prefix (``view_``, ``change_``,
``delete_``, or what the policy's ``permissions`` declares) maps to an action
on the object's policy. Model-level permissions (``obj`` None) and objects
without a policy are left to the other backends (``ModelBackend``).
"""

from __future__ import annotations

from typing import Any

from ..exceptions import NotRegistered
from .api import authorize
from .policy import ObjectRef, registry


class CachedPermissionBackend:
    def authenticate(self, request: Any, **credentials: Any) -> None:
        return None  # authorization only: never logs anyone in

    def has_perm(self, user_obj: Any, perm: str, obj: Any = None) -> bool:
        if obj is None:
            return False
        action = self.action_for(perm, obj)
        return action is not None and authorize(user_obj, obj, action)

    def action_for(self, perm: str, obj: Any) -> str | None:
        """The action ``perm`` names on ``obj``, or None when it is not about obj's model."""
        try:
            policy = registry.for_object(obj)
        except NotRegistered:
            return None
        app_label, _, codename = perm.partition(".")
        meta = (obj.model if isinstance(obj, ObjectRef) else type(obj))._meta
        prefix, _, model_name = codename.partition("_")
        if app_label != meta.app_label or model_name != meta.model_name:
            return None
        return policy.permissions.get(prefix)

    def has_module_perms(self, user_obj: Any, app_label: str) -> bool:
        return False

    def get_all_permissions(self, user_obj: Any, obj: Any = None) -> set[str]:
        return set()
