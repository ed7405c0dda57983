"""App configuration for `studio`, the Velro domain of the example project."""

from django.apps import AppConfig


class StudioConfig(AppConfig):
    name = "studio"
    verbose_name = "Velro studio"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import (
            cache,  # noqa: F401  (declares which model changes retire which cached data)
            materialized,  # noqa: F401  (declares which writes refresh which view)
            permissions,  # noqa: F401  (declares who may do what: velro_cache.authz)
            warming,  # noqa: F401  (declares Velro's warming plan: velro_cache.warming)
        )
