"""The example project's own page: a landing page at ``/`` that says where everything is."""

import importlib.util

from django.conf import settings
from django.http import HttpRequest
from django.template.response import TemplateResponse

# /metrics through django-prometheus when the `prometheus` extra is installed.
HAS_PROMETHEUS = importlib.util.find_spec("django_prometheus") is not None


def landing(request: HttpRequest) -> TemplateResponse:
    """Links to the API, the admin, the dashboard and the metrics, and which cache this process runs."""
    from studio.seed import ADMIN_USERNAME

    mode = getattr(settings, "CACHE_MODE", "TieredCache")
    context = {"cache_mode": mode, "admin_username": ADMIN_USERNAME, "has_metrics": HAS_PROMETHEUS}
    return TemplateResponse(request, "studio/landing.html", context)
