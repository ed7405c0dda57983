"""Hierarchical cache keys: the one builder and parser of keys such as ``gen:456:meta``.

A key is a tuple of parts joined by ``:``, most general first, so that every
prefix of a key names a group of keys (``auth:user:123`` holds everything
cached about user 123's authorization), and its first part names the data
type that statistics and TTLs group by.

Parts can come from anywhere (URLs, user input, database values), so building
a key must never let two different inputs meet in one key. A part made only
of ``[A-Za-z0-9_.-]`` and at most ``MAX_RAW_LENGTH`` characters long is kept as
it is: readable in Redis listings and dashboards. Anything else (a colon, a
space, unicode, an empty string, a very long value, or a value that is not a
string or an integer) is replaced by ``#`` and a BLAKE2b digest of a
type-tagged encoding of the value. ``#`` cannot occur in a kept part, and the
type tag keeps ``b"x"`` apart from ``"x"`` and ``True`` apart from ``1``, so
distinct parts give distinct keys (up to an 80-bit digest collision).

Integers are the one normalization: ``5`` and ``"5"`` are the same part,
because an id arrives as an ``int`` from the ORM and as a ``str`` from a URL,
and both must find the same cached value.
"""

from __future__ import annotations

import datetime
import decimal
import re
import uuid
from hashlib import blake2b
from typing import Any

SEPARATOR = ":"
HASH_MARK = "#"
# Marks the namespace-token stamp that velro_cache.namespaces appends to a
# key; like HASH_MARK it can never start a part that build_key makes.
STAMP_MARK = "@"
MAX_RAW_LENGTH = 64
DIGEST_BYTES = 10  # 80 bits, 20 hex characters

_RAW_PART = re.compile(rf"[A-Za-z0-9_.\-]{{1,{MAX_RAW_LENGTH}}}")
_HASHED_PART = re.compile(rf"#[0-9a-f]{{{2 * DIGEST_BYTES}}}")

KeyLike = str | tuple[Any, ...]


def normalize_part(part: Any) -> str:
    """The form ``part`` takes inside a key: itself when safe, else its digest."""
    if isinstance(part, bool):
        return _hashed(part)
    if isinstance(part, int):
        # int.__repr__ rather than str(): IntEnum / IntegerChoices members must
        # key like the plain integer they stand for.
        part = int.__repr__(part)
    elif isinstance(part, str):
        # The same for str subclasses such as TextChoices members.
        part = str.__str__(part)
    elif isinstance(part, uuid.UUID):
        part = str(part)
    if type(part) is str and _RAW_PART.fullmatch(part):
        return part
    return _hashed(part)


def build_key(*parts: Any) -> str:
    """Join parts into a key; see the module docstring for what is kept and what is hashed."""
    if not parts:
        raise ValueError("a cache key needs at least one part")
    return SEPARATOR.join([normalize_part(part) for part in parts])


def parse_key(key: str) -> tuple[str, ...]:
    """The normalized parts of a key made by ``build_key`` (a namespace stamp is dropped).

    ``parse_key(build_key(*parts)) == tuple(normalize_part(p) for p in parts)``:
    hashed parts come back as their ``#digest``, since a digest cannot be undone.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"not a cache key: {key!r}")
    parts = key.split(SEPARATOR)
    if len(parts) > 1 and parts[-1].startswith(STAMP_MARK):
        parts.pop()
    for part in parts:
        if not is_part(part):
            raise ValueError(
                f"{key!r} is not a key made by velro_cache.keys.build_key: part {part!r} would need "
                "hashing; pass the parts as a tuple instead"
            )
    return tuple(parts)


def is_part(text: str) -> bool:
    """Whether ``text`` can stand as one part of a built key (kept or hashed form)."""
    return bool(_RAW_PART.fullmatch(text) or _HASHED_PART.fullmatch(text))


def as_key(key: KeyLike) -> str:
    """A key given either as parts (a tuple) or as an already built string."""
    if isinstance(key, tuple):
        return build_key(*key)
    if isinstance(key, str):
        return SEPARATOR.join(parse_key(key))
    raise TypeError(f"a cache key is a str or a tuple of parts, not {type(key).__name__}")


def data_type_segment(key: str) -> str:
    """The first part of a key: what statistics and the TTL rules group it by."""
    return key.partition(SEPARATOR)[0]


def digest(data: bytes) -> str:
    """The digest used for hashed parts, exposed so other modules hash alike."""
    return blake2b(data, digest_size=DIGEST_BYTES).hexdigest()


def _hashed(part: Any) -> str:
    return HASH_MARK + digest(_encode(part))


# -- the type-tagged encoding behind hashed parts ---------------------------------------
# Each encoding starts with a tag byte of its own type, and containers frame
# their items with lengths, so two different values never encode alike.


def _encode(value: Any) -> bytes:
    if isinstance(value, str):
        return b"s" + value.encode("utf-8", "surrogatepass")
    if isinstance(value, bool):
        return b"o1" if value else b"o0"
    if value is None:
        return b"n"
    if isinstance(value, float):
        return b"f" + float.hex(value).encode()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return b"b" + bytes(value)
    if isinstance(value, decimal.Decimal):
        return b"d" + str(value).encode()
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return b"t" + type(value).__name__.encode() + b"|" + value.isoformat().encode()
    if isinstance(value, tuple):
        return b"(" + b"".join(_framed(_encode(normalize_part_value(item))) for item in value)
    raise TypeError(
        f"cannot use a {type(value).__name__} as a cache key part: pass a str, int, bool, None, float, "
        "bytes, Decimal, UUID, date/time or a tuple of those (for a model instance, pass its pk)"
    )


def normalize_part_value(item: Any) -> Any:
    """Inside a tuple part, apply the same int/str/UUID normalization as for whole parts."""
    if isinstance(item, bool) or not isinstance(item, (int, str, uuid.UUID)):
        return item
    if isinstance(item, int):
        return int.__repr__(item)
    if isinstance(item, str):
        return str.__str__(item)
    return str(item)


def _framed(data: bytes) -> bytes:
    return len(data).to_bytes(8, "big") + data
