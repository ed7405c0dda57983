"""JSON API routes, mounted under /api/ by the project."""

from django.urls import path

from . import views

app_name = "studio"

urlpatterns = [
    path("generations/", views.generation_batch, name="generation-batch"),
    path("generations/<int:generation_id>/", views.generation_detail, name="generation-detail"),
    path(
        "generations/<int:generation_id>/media/",
        views.generation_media,
        name="generation-media",
    ),
    path("me/", views.me, name="me"),
]
