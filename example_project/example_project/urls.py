"""Project URLs: the admin (where the velro-cache dashboard lives) and the JSON API."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("studio.urls")),
]
