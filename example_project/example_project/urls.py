"""Project URLs: a landing page, the admin (where the velro-cache dashboard lives), the JSON API, and /metrics."""

from django.contrib import admin
from django.urls import include, path

from .views import HAS_PROMETHEUS, landing

urlpatterns = [
    path("", landing, name="landing"),
    path("admin/", admin.site.urls),
    path("api/", include("studio.urls")),
]

if HAS_PROMETHEUS:
    # django-prometheus's /metrics: velro_cache_* of every worker, through the collector velro_cache registers.
    urlpatterns.append(path("", include("django_prometheus.urls")))
