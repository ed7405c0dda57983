"""Hierarchical keys: one builder and parser, safe for any input, never colliding."""

from __future__ import annotations

import datetime
import decimal
import enum
import uuid

import pytest
from django.db import models
from hypothesis import given
from hypothesis import strategies as st

from velro_cache.keys import (
    HASH_MARK,
    MAX_RAW_LENGTH,
    as_key,
    build_key,
    normalize_part,
    parse_key,
)


class Color(models.TextChoices):
    RED = "red", "Red"


class Level(enum.IntEnum):
    HIGH = 3


def test_hierarchical_keys_read_as_written():
    assert build_key("auth", "user", 123, "role", "owner", "gen", 456, "read") == "auth:user:123:role:owner:gen:456:read"
    assert build_key("gen", 456, "meta") == "gen:456:meta"
    assert parse_key("auth:user:123:role:owner:gen:456:read") == ("auth", "user", "123", "role", "owner", "gen", "456", "read")


def test_ids_key_alike_whether_int_str_or_choice():
    assert build_key("gen", 5) == build_key("gen", "5") == "gen:5"
    assert build_key("role", Color.RED) == "role:red"
    assert build_key("level", Level.HIGH) == "level:3"
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert build_key("u", ident) == f"u:{ident}"


@pytest.mark.parametrize(
    "part",
    ["a:b", "with space", "ünïcode", "", "x" * (MAX_RAW_LENGTH + 1), "tab\there", "new\nline", "#" + "0" * 20,
     b"bytes", None, True, False, 1.5, decimal.Decimal("1.50"), datetime.date(2024, 1, 2), ("a", 1), 10**80],
)
def test_odd_parts_are_hashed_into_safe_text(part):
    normalized = normalize_part(part)
    assert normalized.startswith(HASH_MARK)
    assert len(normalized) == 21
    assert all(c.isalnum() or c == "#" for c in normalized)


def test_safe_parts_are_kept_up_to_the_length_limit():
    assert normalize_part("x" * MAX_RAW_LENGTH) == "x" * MAX_RAW_LENGTH
    assert normalize_part("a.b-c_D9") == "a.b-c_D9"
    assert normalize_part(-5) == "-5"


def test_values_that_python_calls_equal_still_key_apart():
    assert len({normalize_part(p) for p in (1, True, 1.0, "1", b"1", decimal.Decimal(1))}) == 5  # 1 and "1" are one part
    assert normalize_part(0.0) != normalize_part(-0.0)
    assert normalize_part(("a", "b")) != normalize_part("a:b") != normalize_part(("a:b",))


def test_unsupported_parts_are_a_clear_error():
    with pytest.raises(TypeError, match="pk"):
        build_key("gen", object())
    with pytest.raises(ValueError):
        build_key()


@pytest.mark.parametrize("bad", ["", "a b", "a::b", "a:#zz", "a:" + "x" * 65, "a:b\n"])
def test_parse_rejects_what_build_never_makes(bad):
    with pytest.raises(ValueError):
        parse_key(bad)


def test_parse_drops_a_namespace_stamp():
    assert parse_key("gen:5:meta:@AbCd1234.xyz-_987") == ("gen", "5", "meta")


def test_as_key_takes_parts_or_a_built_key():
    assert as_key(("gen", 5, "meta")) == as_key("gen:5:meta") == "gen:5:meta"
    with pytest.raises(ValueError):
        as_key("gen:5 6")


# -- properties ---------------------------------------------------------------------------------

parts = st.one_of(
    st.text(max_size=80),
    st.text(alphabet="abcXYZ019_.-:# ", max_size=70),
    st.from_regex(r"#[0-9a-f]{20}", fullmatch=True),
    st.integers(),
    st.integers(min_value=10**60, max_value=10**70),
    st.binary(max_size=20),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
    st.uuids(),
)


def identity(part):
    """What makes two parts the same part: ints are their decimal text, everything else is itself."""
    if isinstance(part, bool):
        return ("bool", part)
    if isinstance(part, int):
        return ("text", str(part))
    if isinstance(part, uuid.UUID):
        return ("text", str(part))
    if isinstance(part, float):
        return ("float", part.hex())
    return (type(part).__name__, part)


@given(st.lists(st.lists(parts, min_size=1, max_size=5).map(tuple), min_size=2, max_size=8))
def test_distinct_part_tuples_give_distinct_keys(tuples):
    identities = {tuple(identity(p) for p in t) for t in tuples}
    keys = {build_key(*t) for t in tuples}
    assert len(keys) == len(identities)


@given(st.lists(parts, min_size=1, max_size=6))
def test_parse_gives_back_the_normalized_parts(part_list):
    key = build_key(*part_list)
    assert parse_key(key) == tuple(normalize_part(p) for p in part_list)
    assert len(parse_key(key)) == len(part_list)  # no part ever splits into two


@given(st.lists(parts, min_size=1, max_size=6))
def test_every_key_is_safe_for_any_backend(part_list):
    key = build_key(*part_list)
    assert all(33 <= ord(c) < 127 for c in key)  # printable ASCII, no spaces or control characters
    assert all(len(p) <= MAX_RAW_LENGTH for p in key.split(":"))
