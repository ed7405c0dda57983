"""Bearer-token authentication for the JSON API.

A token resolves to a small identity (id, username, flags) that is cached under a
digest of the key: the raw key is a credential and must never appear in cache
keys, dashboards or Redis listings. Resolving from the cache saves the token
query on almost every request; the database is asked again at most once per
session TTL per token, which is also when `last_used_at` is refreshed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any

from django.contrib.auth import get_user_model
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone

from .models import ApiToken
from .reads import read_through, token_digest, token_key

_KEY_SHAPE = re.compile(r"^[0-9a-f]{40}$")
_IDENTITY_FIELDS = ("id", "username", "is_active", "is_superuser", "is_staff")
_LAST_USED_GRANULARITY = timedelta(minutes=5)


def bearer_key(request: HttpRequest) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    key = key.strip()
    return key if _KEY_SHAPE.match(key) else None


def _load_identity(key: str) -> dict[str, Any]:
    """The token's user as plain data, or ``{}`` for an unknown key."""
    token = ApiToken.objects.select_related("user").filter(key=key).first()
    if token is None:
        return {}
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > _LAST_USED_GRANULARITY:
        # A save, not QuerySet.update(): write capture knows the row and its changed field, and
        # no declaration lists last_used_at, so nothing is retired. An update() is a write of
        # unknown rows, retired coarsely: every cached session entry, at each token's refresh.
        token.last_used_at = now
        token.save(update_fields=["last_used_at"])
    return identity_of(token.user)


def identity_of(user: Any) -> dict[str, Any]:
    """What a token's cache entry holds about its user (warming builds the same entries)."""
    return {field: getattr(user, field) for field in _IDENTITY_FIELDS}


def _user_from_identity(identity: dict[str, Any]) -> Any:
    """A user instance carrying only the cached fields; others load lazily, like `.only()`."""
    user_model = get_user_model()
    # from_db takes the values in the model's concrete field order.
    names = [f.attname for f in user_model._meta.concrete_fields if f.attname in identity]
    return user_model.from_db(
        user_model._default_manager.db, names, [identity[name] for name in names]
    )


def authenticate_bearer(request: HttpRequest) -> Any | None:
    """The active user behind the request's bearer token, or None."""
    key = bearer_key(request)
    if key is None:
        return None
    loaded = []

    def load() -> dict[str, Any]:
        loaded.append(True)
        return _load_identity(key)

    # An unknown key is cached as {} too: creating its token retires that (studio/cache.py).
    identity = read_through(token_key(token_digest(key)), load)
    if not identity or not identity["is_active"]:
        return None
    if loaded:  # not cached: the token's first request of a session (its identity lives one session TTL)
        from .warming import start_session

        start_session(identity["id"], "token_session")
    return _user_from_identity(identity)


def unauthorized() -> JsonResponse:
    response = JsonResponse(
        {"error": "authentication_required", "detail": "Send a valid 'Authorization: Bearer <key>'."},
        status=401,
    )
    response["WWW-Authenticate"] = 'Bearer realm="velro"'
    return response


def token_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Answer 401 unless a valid bearer token is sent; sets ``request.user`` otherwise."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        user = authenticate_bearer(request)
        if user is None:
            return unauthorized()
        request.user = user
        return view(request, *args, **kwargs)

    return wrapper
