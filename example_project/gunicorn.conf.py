"""Gunicorn settings for the example project: each worker warms its cache as it starts.

    cd example_project && gunicorn -c gunicorn.conf.py

``post_worker_init`` runs in every worker once Django is loaded; the warm-up
runs in a background thread within the plan's budget (studio/warming.py), so
the worker accepts requests at once. The plan's L1 steps run in every worker;
its L2 steps in the first worker to take the plan's Redis lock.
"""

import os

from velro_cache.warming import gunicorn_post_worker_init as post_worker_init  # noqa: F401

wsgi_app = "example_project.wsgi:application"
bind = os.environ.get("VELRO_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("VELRO_WORKERS", "3"))
worker_class = "sync"
