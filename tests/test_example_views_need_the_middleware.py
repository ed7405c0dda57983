"""The example views check access through ``request.authz``: without the middleware that sets it, a clear setup error."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from model_bakery import baker

from studio.models import ApiToken, Generation

pytestmark = pytest.mark.django_db

MIDDLEWARE = "velro_cache.authz.middleware.AuthorizationMiddleware"


@pytest.fixture
def generation() -> Generation:
    return baker.make(Generation, owner=baker.make(User, is_active=True), status="succeeded")


def test_the_view_names_the_missing_middleware(client, settings, generation):
    settings.MIDDLEWARE = [name for name in settings.MIDDLEWARE if name != MIDDLEWARE]
    token = baker.make(ApiToken, user=generation.owner).key
    with pytest.raises(ImproperlyConfigured, match=r"AuthorizationMiddleware to MIDDLEWARE"):
        client.get(f"/api/generations/{generation.pk}/", headers={"Authorization": f"Bearer {token}"})


def test_with_the_middleware_the_same_request_is_served(client, generation):
    token = baker.make(ApiToken, user=generation.owner).key
    response = client.get(f"/api/generations/{generation.pk}/", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200 and response.json()["id"] == generation.pk
