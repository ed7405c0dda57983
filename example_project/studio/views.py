"""The Velro JSON API: generation reads, media access, edits, batch reads and /me.

Status codes are deliberate: 401 before anything else (no existence leaks to
anonymous callers), then 404 for a missing generation, then 403 when the caller's
role is too weak.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods

from velro_cache.authz import ObjectRef
from velro_cache.authz.middleware import RequestAuthorization

from .auth import token_required
from .models import Generation, Role, TeamMembership
from .reads import (
    generation_meta,
    generation_metas,
    me_key,
    read_through,
    serialize_generation,
    system_config,
    team_memberships,
)

DEFAULT_BATCH_MAX_IDS = 100
DEFAULT_MEDIA_URL_TTL = 900
READ_FIELDS = (
    "id", "owner_id", "team_id", "prompt", "status", "model_name", "media_type",
    "thumbnail_url", "width", "height", "duration_ms", "created_at", "updated_at",
)
MEDIA_FIELDS = (
    "id", "media_type", "media_url", "thumbnail_url", "width", "height", "duration_ms",
)
EDITABLE_FIELDS = {"prompt", "status"}
MAX_PROMPT_LENGTH = 4000
DEFAULT_MODEL = "velro-image-v3"


def authz(request: HttpRequest) -> RequestAuthorization:
    """``request.authz``, which AuthorizationMiddleware sets. Every check goes through
    it, so settings without the middleware are a setup error to name, not one to
    paper over by building a context here."""
    try:
        return request.authz
    except AttributeError:
        raise ImproperlyConfigured(
            "The studio views check access through request.authz: add "
            "velro_cache.authz.middleware.AuthorizationMiddleware to MIDDLEWARE."
        ) from None


def _ref(meta: dict[str, Any]) -> ObjectRef:
    """A generation for authorization: only its id. Roles are read from the database
    on a miss, never from the cached copy, which another process may not have
    dropped yet after an ownership or team change."""
    return ObjectRef(Generation, meta["id"])


def error(status: int, code: str, detail: str, **extra: Any) -> JsonResponse:
    return JsonResponse({"error": code, "detail": detail, **extra}, status=status)


def not_found(generation_id: int) -> JsonResponse:
    return error(404, "not_found", f"Generation {generation_id} does not exist.")


def forbidden(action: str) -> JsonResponse:
    return error(403, "forbidden", f"Your role does not allow '{action}' on this generation.")


def pick(meta: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {field: meta[field] for field in fields}


@csrf_exempt
@require_http_methods(["GET", "PATCH"])
@token_required
def generation_detail(request: HttpRequest, generation_id: int) -> JsonResponse:
    if request.method == "PATCH":
        return _update_generation(request, generation_id)
    meta = generation_meta(generation_id)
    if meta is None:
        return not_found(generation_id)
    if not authz(request).can("read", _ref(meta)):
        return forbidden("read")
    return JsonResponse(pick(meta, READ_FIELDS))


@require_GET
@token_required
def generation_media(request: HttpRequest, generation_id: int) -> JsonResponse:
    meta = generation_meta(generation_id)
    if meta is None:
        return not_found(generation_id)
    if not authz(request).can("media", _ref(meta)):
        return forbidden("media")
    payload = pick(meta, MEDIA_FIELDS)
    payload["expires_in"] = system_config("media.url_ttl_seconds", DEFAULT_MEDIA_URL_TTL)
    return JsonResponse(payload)


def _parse_changes(request: HttpRequest) -> dict[str, Any] | JsonResponse:
    """The validated fields to change, or the 400 response explaining why not."""
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return error(400, "invalid_json", "The request body is not valid JSON.")
    if not isinstance(body, dict) or not body:
        return error(400, "invalid_body", "Send a JSON object with 'prompt' and/or 'status'.")
    unknown = sorted(set(body) - EDITABLE_FIELDS)
    if unknown:
        return error(400, "invalid_fields", "These fields cannot be edited.", fields=unknown)
    prompt = body.get("prompt")
    if "prompt" in body and (not isinstance(prompt, str) or not prompt.strip()
                             or len(prompt) > MAX_PROMPT_LENGTH):
        return error(400, "invalid_prompt", f"'prompt' must be 1-{MAX_PROMPT_LENGTH} characters.")
    if "status" in body and body["status"] not in Generation.Status.values:
        return error(400, "invalid_status", "Unknown status.", allowed=Generation.Status.values)
    return body


def _update_generation(request: HttpRequest, generation_id: int) -> JsonResponse:
    """Edits read the row from the database, never from the cache, and decide on it."""
    generation = Generation.objects.filter(pk=generation_id).first()
    if generation is None:
        return not_found(generation_id)
    if not authz(request).can("write", generation):
        return forbidden("write")
    changes = _parse_changes(request)
    if isinstance(changes, JsonResponse):
        return changes
    for field, value in changes.items():
        setattr(generation, field, value)
    # Its cached copy is retired when this commits (studio/cache.py declares it).
    generation.save(update_fields=[*changes, "updated_at"])
    return JsonResponse(pick(serialize_generation(generation), READ_FIELDS))


def _create_generation(request: HttpRequest) -> JsonResponse:
    """A new generation owned by the caller, in one of their teams where they are an editor or owner.

    Like edits, the decision reads the membership from the database; the
    generation's cached "not found" is retired when the row commits.
    """
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return error(400, "invalid_json", "The request body is not valid JSON.")
    prompt = body.get("prompt") if isinstance(body, dict) else None
    if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > MAX_PROMPT_LENGTH:
        return error(400, "invalid_prompt", f"'prompt' must be 1-{MAX_PROMPT_LENGTH} characters.")
    team_id = body.get("team_id")
    if team_id is not None:
        writable = TeamMembership.objects.filter(
            team_id=team_id, user_id=request.user.pk, role__in=[Role.EDITOR, Role.OWNER]
        )
        if not isinstance(team_id, int) or not writable.exists():
            return forbidden("create")
    generation = Generation.objects.create(
        owner_id=request.user.pk, team_id=team_id, prompt=prompt, model_name=DEFAULT_MODEL,
    )
    return JsonResponse(pick(serialize_generation(generation), READ_FIELDS), status=201)


def _parse_ids(raw: str, limit: int) -> list[int] | JsonResponse:
    try:
        ids = list(dict.fromkeys(int(part) for part in raw.split(",") if part.strip()))
    except ValueError:
        return error(400, "invalid_ids", "'ids' must be comma-separated integers.")
    if not ids:
        return error(400, "invalid_ids", "Pass ?ids=1,2,3.")
    if len(ids) > limit:
        return error(400, "too_many_ids", f"At most {limit} ids per request.", limit=limit)
    return ids


@csrf_exempt
@require_http_methods(["GET", "POST"])
@token_required
def generation_batch(request: HttpRequest) -> JsonResponse:
    if request.method == "POST":
        return _create_generation(request)
    limit = system_config("api.batch_max_ids", DEFAULT_BATCH_MAX_IDS)
    ids = _parse_ids(request.GET.get("ids", ""), limit)
    if isinstance(ids, JsonResponse):
        return ids
    metas = generation_metas(ids)
    allowed = authz(request).can_many("read", [_ref(meta) for meta in metas.values() if meta is not None])
    results, denied, missing = [], [], []
    for pk in ids:
        meta = metas.get(pk)
        if meta is None:
            missing.append(pk)
        elif allowed[pk]:
            results.append(pick(meta, READ_FIELDS))
        else:
            denied.append(pk)
    return JsonResponse({"results": results, "denied": denied, "missing": missing})


@require_GET
@token_required
def me(request: HttpRequest) -> JsonResponse:
    user = request.user

    def load() -> dict[str, Any]:
        # request.user carries only the token's cached fields; one query fetches the rest.
        profile = (
            get_user_model()
            .objects.filter(pk=user.pk)
            .values("email", "first_name", "last_name")
            .first()
        ) or {"email": "", "first_name": "", "last_name": ""}
        return {
            "id": user.pk,
            "username": user.username,
            **profile,
            "is_staff": user.is_staff,
            "teams": [
                {"id": m["team_id"], "name": m["team_name"], "slug": m["team_slug"],
                 "role": m["role"]}
                for m in team_memberships(user.pk)
            ],
        }

    return JsonResponse(read_through(me_key(user.pk), load))
