"""The record page: the value shape API views cache most, shared by the L2 and latency benchmarks.

A page of 30 records as a list endpoint serializes them: each record carries
a timezone-aware datetime, a Decimal price and nested lists (tags, a size
pair, a list of small dicts for its variants). It is the shape where a codec
that needs Python callbacks for datetimes and decimals, and a copy plan that
walks every nested list, cost the most (issue 11).
"""

from __future__ import annotations

import datetime
from decimal import Decimal
from typing import Any

RECORD_PAGE = "record page (30 records: datetime, Decimal, nested lists)"
PAGE_SIZE = 30

_EPOCH = datetime.datetime(2026, 11, 1, 9, 30, tzinfo=datetime.UTC)


def page_record(index: int) -> dict[str, Any]:
    """One generation row with the types a Django model serializer emits."""
    return {
        "id": 1000 + index,
        "owner": 17,
        "status": "done",
        "prompt": f"a watercolor fox at dusk, variation {index}",
        "created": _EPOCH + datetime.timedelta(minutes=index),
        "price": Decimal("0.0400") + Decimal(index) / 100,
        "tags": ["fox", "watercolor", f"v{index}"],
        "size": [512, 768],
        "variants": [{"seed": index * 7 + n, "url": f"https://media.velro.example/g/{1000 + index}/{n}.webp"} for n in range(2)],
    }


def record_page() -> list[dict[str, Any]]:
    """A fresh page of ``PAGE_SIZE`` records (a new object each call: callers may mutate it)."""
    return [page_record(index) for index in range(PAGE_SIZE)]
