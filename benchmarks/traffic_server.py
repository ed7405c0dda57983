"""What the traffic benchmark's server tells the client about each request, in response headers.

``X-Queries``: SQL statements the request sent to PostgreSQL (an ORM cache's
hit sends none, so this counts what each arm really asked the database).
``X-Read-Hits`` / ``X-Read-Misses``: the example's read-through helpers
(``studio.reads.read_stats``, per thread, so exact in a sync worker).
Both are cheap counters, the same in every arm.
"""

from __future__ import annotations

from collections.abc import Callable

from django.db import connection
from django.http import HttpRequest, HttpResponse

from . import common


class CountingMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        from studio.reads import read_stats

        reads = read_stats.thread_counter()
        hits, misses = reads["hits"], reads["misses"]
        counter = common.QueryCounter()
        with connection.execute_wrapper(counter):
            response = self.get_response(request)
        response["X-Queries"] = str(counter.count)
        response["X-Read-Hits"] = str(reads["hits"] - hits)
        response["X-Read-Misses"] = str(reads["misses"] - misses)
        return response
