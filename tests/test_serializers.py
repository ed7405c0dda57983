"""The serializer: exact round trips, and no crash or code execution on foreign bytes."""

from __future__ import annotations

import datetime
import decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from velro_cache.exceptions import CorruptEntry, UnverifiedEntry
from velro_cache.serializers import INT64_MAX, MSGPACK, MSGPACK_LZ4, PICKLE, Serializer

SERIALIZER = Serializer(signing_key=b"k" * 32)

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
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_corrupt_entry(data):
    try:
        SERIALIZER.loads(data, key=KEY)
    except CorruptEntry:
        pass


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([0xA1, 0xA2, 0xA3, 0xA4, 0xB1, 0xB2, 0xB3, 0xB4]), st.binary(max_size=200))
def test_framed_garbage_never_verifies(head, rest):
    with pytest.raises(UnverifiedEntry):
        SERIALIZER.loads(bytes([head]) + rest, key=KEY)


def test_codec_choice():
    assert SERIALIZER.dumps(5, key=KEY) == 5 and SERIALIZER.dumps(INT64_MAX, key=KEY) == INT64_MAX
    assert isinstance(SERIALIZER.dumps(INT64_MAX + 1, key=KEY), bytes)  # beyond INCR's range
    assert isinstance(SERIALIZER.dumps(True, key=KEY), bytes)  # bools are not counters
    assert SERIALIZER.encode({"a": 1})[0] == MSGPACK
    assert SERIALIZER.encode("x" * 5000)[0] == MSGPACK_LZ4
    assert SERIALIZER.encode(datetime.datetime.now().astimezone().tzinfo)[0] in (PICKLE, PICKLE + 1)
    assert SERIALIZER.encode(decimal.Decimal("1.5"))[0] == MSGPACK


def test_incompressible_values_are_stored_uncompressed():
    import os

    assert SERIALIZER.encode(os.urandom(4096))[0] == MSGPACK
