"""ASGI entry point that warms each worker at ``lifespan.startup`` (Django's ASGI app has no lifespan).

    cd example_project && uvicorn example_project.asgi_lifespan:application --workers 3 --lifespan on

Startup completes at once; the warm-up runs in a background thread within the
plan's budget (studio/warming.py), L2 steps in the one worker holding the lock.
"""

import os

from django.core.asgi import get_asgi_application

from velro_cache.warming import lifespan

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

application = lifespan(get_asgi_application())
