"""``AuthorizationMiddleware``: ``request.authz`` for the views, one version read per request.

The context is resolved lazily from ``request.user`` at the first check, not
when the middleware runs: views that authenticate by themselves (a bearer
token decorator replacing ``request.user``) get the right user, and requests
that check nothing cost no Redis round trip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django.http import HttpRequest, HttpResponse

from .context import AuthorizationContext, Scope, activate, deactivate


class RequestAuthorization(Scope):
    """``request.authz``: ``can(action, obj)`` and ``can_many(action, objs)`` for ``request.user``."""

    def __init__(self, request: HttpRequest) -> None:
        super().__init__()
        self._request = request

    @property
    def context(self) -> AuthorizationContext:
        user = getattr(self._request, "user", None)
        return self.context_for(user) or AuthorizationContext(user)

    def can(self, action: str, obj: Any) -> bool:
        return self.context.can(action, obj)

    def can_many(self, action: str, objs: Iterable[Any]) -> dict[Any, bool]:
        return self.context.can_many(action, objs)


class AuthorizationMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.authz = RequestAuthorization(request)
        token = activate(request.authz)
        try:
            return self.get_response(request)
        finally:
            deactivate(token)
