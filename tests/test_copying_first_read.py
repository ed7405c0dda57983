"""Copy-on-read for values that arrive serialized (an L2 hit, a write): planned on the first L1 read.

Such a value is held in L1 as its body until it is first read from there; that
read decodes it and plans the copy. Every read, before and after, must still
hand out an object no other caller holds: the record page is mutated at every
depth after each read, and the next read must not see it.
"""

from __future__ import annotations

import copy
import datetime
import time
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.shapes import record_page
from velro_cache.tiers.copying import plan_copy


def _two_processes(private_redis):
    """A writer and a reader with their own L1 each (another MAX_BYTES: another process state), on one Redis."""
    from velro_cache.backends import TieredCache

    def make(max_bytes):
        return TieredCache(private_redis.url(), {"KEY_PREFIX": "first-read", "OPTIONS": {"L1": {"MAX_BYTES": max_bytes}}})

    return make(2_000_003), make(2_000_004)


def _vandalize(page):
    """Change a page at every depth: the list, a record, its nested lists and dicts."""
    page[0]["tags"].append("changed")
    page[1]["variants"][0]["seed"] = -1
    page[2]["size"][0] = 0
    page[3]["created"] = datetime.datetime(1999, 1, 1)
    page[4]["price"] = Decimal("9.99")
    page.append({"id": "extra"})


def test_record_page_read_from_l2_then_from_l1_is_never_shared(private_redis):
    writer, reader = _two_processes(private_redis)
    original = record_page()
    writer.set("page", record_page(), 60)
    # Until the reader's coherence channel confirms (its first PING), L1 is not
    # trusted and reads go to L2: read on until three were L1 hits (the first
    # L1 read, which plans, and two planned copies), checking every read.
    for _ in range(500):
        got = reader.get("page")
        assert got == original
        _vandalize(got)
        if reader.stats()["totals"]["l1_hits"] >= 3:
            break
        time.sleep(0.01)
    stats = reader.stats()["totals"]
    assert stats["l2_hits"] >= 1 and stats["l1_hits"] >= 3


def test_a_write_after_promotion_wins_over_the_planned_copy(private_redis):
    writer, reader = _two_processes(private_redis)
    writer.set("page", record_page(), 60)
    assert reader.get("page") == record_page()  # promoted, held as its body
    newer = record_page()
    newer[0]["status"] = "deleted"
    reader.set("page", newer, 60)  # this process's own write replaces the held body
    assert reader.get("page") == newer
    assert reader.get("page") == newer  # and the first L1 read did not bring the old body back


def test_writer_reads_its_own_write_as_a_copy(private_redis):
    writer, _ = _two_processes(private_redis)
    page = record_page()
    writer.set("page", page, 60)
    _vandalize(page)  # the caller's object after set
    for _ in range(3):
        got = writer.get("page")
        assert got == record_page()
        _vandalize(got)


def test_records_of_one_shape_share_one_copier():
    """A list of same-shaped records is copied by one copier mapped over it, not one closure per record."""
    page = record_page()
    first, _ = plan_copy(page[0])
    assert all(plan_copy(record)[0] is first for record in page[1:])
    reader, _ = plan_copy(page)
    copied = reader(page)
    assert copied == page and copied is not page
    assert all(a is not b and a["tags"] is not b["tags"] and a["variants"][0] is not b["variants"][0] for a, b in zip(copied, page))
    assert copied[0]["created"] is page[0]["created"]  # immutable leaves are shared, never copied
    assert copy.deepcopy(page) == copied


def _mutable_ids(value, found=None):
    """The ids of every mutable container inside ``value`` (itself included)."""
    found = set() if found is None else found
    if isinstance(value, (dict, list, set)):
        found.add(id(value))
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple, set, frozenset)) else ()
    for item in items:
        _mutable_ids(item, found)
    return found


_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5), st.datetimes(), st.decimals(allow_nan=False))
_KEYS = st.one_of(st.text(max_size=8), st.integers(), st.tuples(st.integers(), st.text(max_size=3)))
_VALUES = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(_KEYS, inner, max_size=5),
        st.tuples(inner, inner),
        st.sets(st.integers(), max_size=3),
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(value=_VALUES)
def test_a_planned_copy_equals_the_value_and_shares_no_mutable_container(value):
    """Whatever the keys (str, int, tuple: bound, never compiled into the copier) and nesting, a copy is independent."""
    reader, _ = plan_copy(value)
    copied = value if reader is None else reader(value)
    assert copied == value and type(copied) is type(value)
    assert not (_mutable_ids(copied) & _mutable_ids(value))
    again = value if reader is None else reader(value)
    assert not (_mutable_ids(copied) & _mutable_ids(again))
