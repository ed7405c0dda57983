"""The serializer: exact round trips, and no crash or code execution on foreign bytes."""

from __future__ import annotations

import datetime
import decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from velro_cache.exceptions import CorruptEntry, UnverifiedEntry
from velro_cache.serializers import INT64_MAX, MSGPACK, PICKLE, PLAIN, PLAIN_LZ4, Serializer

SERIALIZER = Serializer(signing_key=b"k" * 32)
NO_PICKLE = Serializer(signing_key=b"k" * 32, pickle_fallback=False)

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | st.datetimes()
    | st.dates()
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.uuids()
)
hashables = st.recursive(scalars, lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3), max_leaves=8)
plain_data = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(hashables, inner, max_size=5) | st.tuples(inner, inner),
    max_leaves=20,
)


KEY = "p:1:k"


def wire(value, key=KEY):
    data = SERIALIZER.dumps(value, key=key)
    return str(data).encode() if isinstance(data, int) else data


@settings(max_examples=300, deadline=None)
@given(plain_data)
def test_plain_data_round_trips_exactly_through_the_wire(value):
    got = SERIALIZER.loads(wire(value), key=KEY)
    assert got == value
    assert type(got) is type(value)


@settings(max_examples=300, deadline=None)
@given(plain_data)
def test_plain_data_round_trips_exactly_with_pickle_forbidden(value):
    data = NO_PICKLE.dumps(value, key=KEY)
    got = NO_PICKLE.loads(str(data).encode() if isinstance(data, int) else data, key=KEY)
    assert got == value
    assert type(got) is type(value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_corrupt_entry(data):
    try:
        SERIALIZER.loads(data, key=KEY)
    except CorruptEntry:
        pass


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([0xA1, 0xA2, 0xA3, 0xA4, 0xB1, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6]), st.binary(max_size=200))
def test_framed_garbage_never_verifies(head, rest):
    with pytest.raises(UnverifiedEntry):
        SERIALIZER.loads(bytes([head]) + rest, key=KEY)


def test_codec_choice():
    assert SERIALIZER.dumps(5, key=KEY) == 5 and SERIALIZER.dumps(INT64_MAX, key=KEY) == INT64_MAX
    assert isinstance(SERIALIZER.dumps(INT64_MAX + 1, key=KEY), bytes)  # beyond INCR's range
    assert isinstance(SERIALIZER.dumps(True, key=KEY), bytes)  # bools are not counters
    # JSON-like data: ormsgpack, no Python hook on either side.
    assert SERIALIZER.encode({"a": 1, "b": [1.5, None, "x", b"y"]})[0] == PLAIN
    assert SERIALIZER.encode("x" * 5000)[0] == PLAIN_LZ4
    # Types ormsgpack would change (tuples to lists, datetimes to str, ...): pickle, authenticated.
    for typed in ((1, 2), {1: "int key"}, decimal.Decimal("1.5"), datetime.datetime(2026, 1, 1), {"a": {1, 2}}):
        assert SERIALIZER.encode(typed)[0] == PICKLE, typed
    assert SERIALIZER.encode(datetime.datetime.now().astimezone().tzinfo)[0] in (PICKLE, PICKLE + 1)
    # With pickle forbidden, those go through msgpack extension types instead.
    assert NO_PICKLE.encode(decimal.Decimal("1.5"))[0] == MSGPACK
    assert NO_PICKLE.encode([datetime.datetime(2026, 1, 1), (1, 2)])[0] == MSGPACK


def test_incompressible_values_are_stored_uncompressed():
    import os

    assert SERIALIZER.encode(os.urandom(4096))[0] == PLAIN


def test_frames_written_with_the_previous_codecs_stay_readable():
    """Processes of the previous release wrote msgpack-hook (0xB1) and pickle (0xB3) frames; a rolling deploy reads them."""
    import pickle

    from velro_cache.serializers import _pack_plain

    value = {"a": [1, 2], "when": datetime.datetime(2026, 1, 1), "price": decimal.Decimal("0.04")}
    old_msgpack = SERIALIZER.frame(MSGPACK, _pack_plain(value), None, key=KEY)
    old_pickle = SERIALIZER.frame(PICKLE, pickle.dumps(value), None, key=KEY)
    assert old_msgpack[0] == 0xB1 and old_pickle[0] == 0xB3
    assert SERIALIZER.loads(old_msgpack, key=KEY) == value
    assert SERIALIZER.loads(old_pickle, key=KEY) == value
    assert NO_PICKLE.loads(old_msgpack, key=KEY) == value
    with pytest.raises(CorruptEntry):  # a counted miss, never unpickled
        NO_PICKLE.loads(old_pickle, key=KEY)
