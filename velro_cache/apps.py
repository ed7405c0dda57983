"""The Django app: registers the system checks, installs write capture and the request-start confirmation,
starts the telemetry publisher and the switch refresher, and exports the Prometheus metrics when Django starts."""

from django.apps import AppConfig


class VelroCacheConfig(AppConfig):
    name = "velro_cache"
    verbose_name = "Velro cache"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks, freshness  # noqa: F401  (registers the checks)
        from .conf import settings
        from .db import schedule, writes  # noqa: F401  (connect the view refreshes after writes and on a schedule)
        from .invalidation import capture, load_declarations

        load_declarations()  # the modules VELRO_CACHE["INVALIDATION"] names
        freshness.connect()  # read-your-writes at every request's start
        if settings.CAPTURE_WRITES:
            capture.enable()  # every statement on every connection, this one and those to come
        if settings.LISTEN_EXTERNAL_WRITES:
            from .db import notify

            notify.enable()  # writes made outside Django, announced by CaptureWrites triggers
        from . import alerts
        from .telemetry import prometheus, publisher

        alerts.install()  # thresholds of VELRO_CACHE["ALERTS"], evaluated on the publisher's ticks
        publisher.start()  # this process's figures to Redis, off the request path
        prometheus.register_default()  # velro_cache_* in prometheus_client's registry, when it is installed
        from . import switches

        switches.start()  # the runtime switches, re-read from Redis every second
