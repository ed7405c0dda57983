"""Turn cache values into bytes and back, safely and fast.

Encodings, chosen per value by what measured fastest for it (the figures are
in ``benchmarks/results/l2.md``):

* integers (not bools) that fit in 64 bits are stored raw, as Redis' decimal
  text, so ``INCRBY`` works on them atomically; they are read back strictly
  (only what ``INCRBY`` writes: an optional ``-`` and digits without leading
  zeros), so ``b"1_000"`` or ``b" 1"`` is a foreign value, not 1000;
* JSON-like data (``dict`` with ``str`` keys, ``list``, ``str``, ``bytes``,
  ``int``, ``float``, ``bool``, ``None``, exact types only) goes through
  ormsgpack (``PLAIN``), a msgpack codec compiled from Rust: one call each
  way, no Python hook, faster than pickle and msgpack-python on such values,
  and it cannot execute code when decoded;
* anything else (tuples, sets, datetimes, decimals, UUIDs, subclasses,
  objects) is pickled: on the record page (datetimes, decimals, nested lists)
  pickle encodes in half the time of msgpack with Python extension hooks and
  decodes in 0.6 of it, and every frame is authenticated before it is decoded
  (below), so only a holder of the signing key can make bytes that get
  unpickled;
* with ``PICKLE_FALLBACK=False`` pickle is never written nor read: those
  values go through msgpack with extension types (``tuple``, ``set``,
  ``frozenset``, ``datetime``/``date``/``time``/``timedelta`` with no or fixed
  offsets, ``Decimal``, ``UUID``, big integers) and anything else is refused.

On the wire (L2) every frame, whatever its codec, carries a keyed BLAKE2b MAC
over the Redis key it was written to, its header and its body: bytes written
into Redis by anyone without the key, or a genuine frame copied to another
key, are never decoded. They raise ``UnverifiedEntry``, a miss the backend
counts and leaves in place (it may belong to a deployment with another key, or
to the other side of a key rotation). Frames are signed with the current key
and verified with it and every fallback key (``SECRET_KEY_FALLBACKS``).

Bodies of ``compress_min_bytes`` or more are compressed with LZ4 (block
format), picked over zstd by measurement: on a 2 KiB record LZ4 decompresses in
0.3 us against zstd's 2.1 us, and the L1 hit path pays for decompression.
"""

from __future__ import annotations

import datetime
import hashlib
import pickle
import re
import struct
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal
from functools import partial
from hmac import compare_digest
from typing import Any, NamedTuple

import lz4.block
import msgpack
import ormsgpack

from . import switches
from .exceptions import CorruptEntry, UnserializableValue, UnverifiedEntry

# Codecs of a body. OBJECT is L1-only: an immutable value held as itself.
# Each compressed codec is its uncompressed one + 1.
OBJECT, MSGPACK, MSGPACK_LZ4, PICKLE, PICKLE_LZ4, PLAIN, PLAIN_LZ4 = range(7)
_PICKLE_CODECS = frozenset((PICKLE, PICKLE_LZ4))
_LZ4_CODECS = frozenset((MSGPACK_LZ4, PICKLE_LZ4, PLAIN_LZ4))

# First byte of a framed (wire) value: the format version and the codec.
# Chosen outside ASCII digits and "-" so a raw integer can never be mistaken
# for a frame. Format 2 (0xB1-0xB6) authenticates every frame; format 1
# (0xA1-0xA4, the previous release: MAC on pickle bodies only) reads as an
# unverified miss, never decoded. 0xB5/0xB6 (ormsgpack bodies) are new in this
# release: a process of the previous one reads them as a foreign value, a
# counted miss, and every frame it wrote stays readable here.
_FRAME_BYTE = {MSGPACK: 0xB1, MSGPACK_LZ4: 0xB2, PICKLE: 0xB3, PICKLE_LZ4: 0xB4, PLAIN: 0xB5, PLAIN_LZ4: 0xB6}
_FRAME_CODEC = {byte: codec for codec, byte in _FRAME_BYTE.items()}
_OLD_FORMAT_BYTES = frozenset((0xA1, 0xA2, 0xA3, 0xA4))
MAC_BYTES = 16
# A frame is: codec byte, expiry (big-endian float64 epoch seconds, 0 = never),
# the seconds its loader took (float32, 0 = not loaded through get_or_load),
# the MAC, then the body. The expiry travels with the value so a promotion
# into L1 needs no PTTL round trip (``touch`` re-signs it, see
# ``TieredCache.touch``); the load time lets every process refresh hot keys
# early (XFetch) without asking Redis.
# MAC = BLAKE2b-128 keyed, over len(key) | key | header | body: the key is
# bound in, so a valid frame replayed under another key (another user's
# authorization decision, another version of a value) does not verify.
_EXPIRY = struct.Struct(">d")
_DELTA = struct.Struct(">f")
_KEY_LENGTH = struct.Struct(">I")
_TIMES = struct.Struct(">df")  # expiry and load time, as the header holds them after the codec byte
HEADER_BYTES = 1 + _EXPIRY.size + _DELTA.size
BODY_START = HEADER_BYTES + MAC_BYTES

# Exactly what Redis INCRBY writes (and str(int) for int64): no sign but "-",
# no leading zeros, no spaces or underscores, which int() would all accept.
_RAW_INT = re.compile(rb"0|-?[1-9][0-9]{0,18}")

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# msgpack extension type codes.
_EXT_TUPLE, _EXT_SET, _EXT_FROZENSET = 1, 2, 3
_EXT_DATETIME, _EXT_DATE, _EXT_TIME, _EXT_TIMEDELTA = 4, 5, 6, 7
_EXT_DECIMAL, _EXT_UUID, _EXT_BIGINT = 8, 9, 10


class Frame(NamedTuple):
    """A wire value taken apart."""

    codec: int
    body: Any
    expires_at: float | None  # epoch seconds
    delta: float  # seconds the loader took; 0 when not loaded through get_or_load


class _NotPlain(Exception):
    """Raised inside msgpack's default hook: the value needs the fallback."""


# Every type ormsgpack would turn into another one (a tuple into a list, a
# datetime into a str, a str subclass into a str, ...) is passed through
# instead; with no ``default`` hook that raises TypeError, and the value takes
# the exact path. (bytearray and memoryview come back as bytes, as they do
# through msgpack-python.)
_EXACT_ONLY = (
    ormsgpack.OPT_PASSTHROUGH_BIG_INT
    | ormsgpack.OPT_PASSTHROUGH_DATACLASS
    | ormsgpack.OPT_PASSTHROUGH_DATETIME
    | ormsgpack.OPT_PASSTHROUGH_ENUM
    | ormsgpack.OPT_PASSTHROUGH_SUBCLASS
    | ormsgpack.OPT_PASSTHROUGH_TUPLE
    | ormsgpack.OPT_PASSTHROUGH_UUID
)


def _pack_json_like(value: Any) -> bytes:
    """ormsgpack bytes of a JSON-like value; TypeError for anything it would not round-trip exactly."""
    return ormsgpack.packb(value, option=_EXACT_ONLY)


_unpack_json_like = ormsgpack.unpackb


def _pack_plain(value: Any) -> bytes:
    return msgpack.packb(value, default=_encode_ext, strict_types=True, use_bin_type=True)


def _encode_ext(obj: Any) -> msgpack.ExtType:
    kind = type(obj)
    if kind is tuple:
        return msgpack.ExtType(_EXT_TUPLE, _pack_plain(list(obj)))
    if kind is set or kind is frozenset:
        code = _EXT_SET if kind is set else _EXT_FROZENSET
        return msgpack.ExtType(code, _pack_plain(list(obj)))
    if kind is datetime.datetime and (obj.tzinfo is None or type(obj.tzinfo) is datetime.timezone):
        return msgpack.ExtType(_EXT_DATETIME, obj.isoformat().encode())
    if kind is datetime.date:
        return msgpack.ExtType(_EXT_DATE, obj.isoformat().encode())
    if kind is datetime.time and (obj.tzinfo is None or type(obj.tzinfo) is datetime.timezone):
        return msgpack.ExtType(_EXT_TIME, obj.isoformat().encode())
    if kind is datetime.timedelta:
        return msgpack.ExtType(_EXT_TIMEDELTA, _pack_plain([obj.days, obj.seconds, obj.microseconds]))
    if kind is Decimal:
        return msgpack.ExtType(_EXT_DECIMAL, str(obj).encode())
    if kind is uuid.UUID:
        return msgpack.ExtType(_EXT_UUID, obj.bytes)
    if kind is int:  # msgpack only rejects ints outside 64 bits
        return msgpack.ExtType(_EXT_BIGINT, str(obj).encode())
    raise _NotPlain(kind)


def _decode_ext(code: int, data: bytes) -> Any:
    if code == _EXT_TUPLE:
        return tuple(_unpack_plain(data))
    if code == _EXT_SET:
        return set(_unpack_plain(data))
    if code == _EXT_FROZENSET:
        return frozenset(_unpack_plain(data))
    if code == _EXT_DATETIME:
        return datetime.datetime.fromisoformat(data.decode())
    if code == _EXT_DATE:
        return datetime.date.fromisoformat(data.decode())
    if code == _EXT_TIME:
        return datetime.time.fromisoformat(data.decode())
    if code == _EXT_TIMEDELTA:
        days, seconds, microseconds = _unpack_plain(data)
        return datetime.timedelta(days=days, seconds=seconds, microseconds=microseconds)
    if code == _EXT_DECIMAL:
        return Decimal(data.decode())
    if code == _EXT_UUID:
        return uuid.UUID(bytes=data)
    if code == _EXT_BIGINT:
        return int(data)
    raise CorruptEntry(f"unknown msgpack extension type {code}")


_unpack_plain = partial(msgpack.unpackb, ext_hook=_decode_ext, raw=False, strict_map_key=False)


def derive_signing_key(secret: str) -> bytes:
    """A key for the frame MAC, derived so SECRET_KEY itself never leaves Django.

    The derivation's label names the frame format: a key derived for format 1
    (pickle bodies only) never verifies a format 2 frame.
    """
    return hashlib.sha256(b"velro_cache.serializers.frame.v2:" + secret.encode()).digest()


def parse_raw_int(data: bytes) -> int:
    """A raw Redis integer, parsed as strictly as INCRBY writes it; else ``UnverifiedEntry``."""
    if _RAW_INT.fullmatch(data) is None:
        raise UnverifiedEntry("value was not written by velro_cache")
    value = int(data)
    if not INT64_MIN <= value <= INT64_MAX:
        raise UnverifiedEntry("raw integer outside Redis' 64-bit range")
    return value


class Serializer:
    """Encodes values for L1 (``encode``/``decode``) and for the wire (``dumps``/``loads``)."""

    def __init__(
        self,
        *,
        signing_key: bytes,
        fallback_keys: Sequence[bytes] = (),
        pickle_fallback: bool = True,
        compress_min_bytes: int = 1024,
    ) -> None:
        self.signing_key = signing_key
        # Verified after the current key, in order: keys of a rotation still under way.
        self.fallback_keys = tuple(key for key in fallback_keys if key != signing_key)
        # Keying BLAKE2b compresses a whole block for the key; a copy of a state
        # keyed once gives the same digest without it (a share of every verify).
        self._keyed = _keyed_blake2b(signing_key)
        self._fallback_keyed = tuple(_keyed_blake2b(key) for key in self.fallback_keys)
        self.pickle_fallback = pickle_fallback
        self.compress_min_bytes = compress_min_bytes

    # -- bodies (shared by L1 and the wire) ---------------------------------
    def encode(self, value: Any, key: str | None = None) -> tuple[int, bytes]:
        """Return ``(codec, body)`` for any storable value; ``key`` decides the compression switch's rollout."""
        try:
            codec, body = PLAIN, _pack_json_like(value)
        except TypeError:  # also what ormsgpack raises past its depth limit
            codec, body = self._encode_typed(value)
        if len(body) >= self.compress_min_bytes and switches.on(switches.COMPRESSION, key):
            packed = lz4.block.compress(body)
            if len(packed) < len(body):
                return codec + 1, packed
        return codec, body

    def _encode_typed(self, value: Any) -> tuple[int, bytes]:
        """A value beyond JSON-like data: pickled, or with pickle forbidden, msgpack with extension types."""
        if self.pickle_fallback:
            return PICKLE, self._pickle(value)
        try:
            return MSGPACK, _pack_plain(value)
        except (_NotPlain, ValueError, OverflowError, RecursionError):
            # RecursionError: a self-referencing or very deep value.
            return PICKLE, self._pickle(value)  # which refuses: pickle is forbidden

    def _pickle(self, value: Any) -> bytes:
        if not self.pickle_fallback:
            raise UnserializableValue(
                f"A value of type {type(value).__name__} is not plain data and PICKLE_FALLBACK is False; "
                "store plain data (dict, list, str, numbers, datetimes, ...) or allow the fallback."
            )
        return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)

    def reader_for(self, codec: int) -> Callable[[bytes], Any]:
        """A one-argument decoder for bodies of ``codec`` (what L1 calls on a hit)."""
        if codec == PLAIN:
            return _unpack_json_like
        if codec == MSGPACK:
            return _unpack_plain
        return partial(self.decode, codec)

    def decode(self, codec: int, body: Any) -> Any:
        """Inverse of ``encode``; any damage surfaces as ``CorruptEntry``."""
        if codec == OBJECT:
            return body
        try:
            if codec in _LZ4_CODECS:
                body = lz4.block.decompress(body)
            if codec >= PLAIN:
                return _unpack_json_like(body)
            if codec <= MSGPACK_LZ4:
                return _unpack_plain(body)
            return pickle.loads(body)
        except CorruptEntry:
            raise
        except Exception as exc:  # any decoder error means the bytes are not ours
            # The decoder's class only: its message can quote the bytes (a cached value).
            raise CorruptEntry(f"undecodable {codec=} body: {type(exc).__name__}") from None

    # -- wire frames (L2) -----------------------------------------------------
    def dumps(self, value: Any, expires_at: float | None = None, delta: float = 0.0, *, key: str) -> int | bytes:
        """Bytes for Redis at ``key``, or an int that Redis stores as decimal text."""
        if type(value) is int and INT64_MIN <= value <= INT64_MAX:
            return value
        codec, body = self.encode(value, key)
        return self.frame(codec, body, expires_at, delta, key=key)

    def frame(self, codec: int, body: bytes, expires_at: float | None, delta: float = 0.0, *, key: str) -> bytes:
        """Prefix a body with its codec byte, expiry, load time and the MAC binding them to ``key``."""
        head = bytes((_FRAME_BYTE[codec],)) + _EXPIRY.pack(expires_at or 0.0) + _DELTA.pack(delta)
        return head + self._mac(self._keyed, key, head, body) + body

    def unframe(self, data: bytes, *, key: str) -> Frame:
        """The parts of a wire value read from ``key``, MAC verified.

        A raw integer comes back with codec OBJECT and no expiry: its expiry is
        not in the value (Redis keeps it), so callers must not promote it.
        Raises ``UnverifiedEntry`` for anything this deployment did not sign
        for this key, ``CorruptEntry`` for an authentic frame it cannot use.
        """
        if not data:
            raise UnverifiedEntry("empty value")
        codec = _FRAME_CODEC.get(data[0])
        if codec is None:
            if data[0] in _OLD_FORMAT_BYTES:
                raise UnverifiedEntry("frame of an older format (unauthenticated)")
            return Frame(OBJECT, parse_raw_int(data), None, 0.0)
        if len(data) < BODY_START:
            raise UnverifiedEntry("truncated frame")
        head, body = data[:HEADER_BYTES], data[BODY_START:]
        if not self._verifies(data[HEADER_BYTES:BODY_START], key, head, body):
            raise UnverifiedEntry("frame with a bad MAC (another signing key, another key's frame, or forged)")
        if codec in _PICKLE_CODECS and not self.pickle_fallback:
            raise CorruptEntry("pickled value found while PICKLE_FALLBACK is False")
        expires_at, delta = _TIMES.unpack_from(data, 1)
        return Frame(codec, body, expires_at or None, delta)

    def loads(self, data: bytes, *, key: str) -> Any:
        frame = self.unframe(data, key=key)
        return self.decode(frame.codec, frame.body)

    def _verifies(self, mac: bytes, key: str, head: bytes, body: bytes) -> bool:
        if compare_digest(mac, self._mac(self._keyed, key, head, body)):
            return True
        return any(compare_digest(mac, self._mac(keyed, key, head, body)) for keyed in self._fallback_keyed)

    @staticmethod
    def _mac(keyed: Any, key: str, head: bytes, body: bytes) -> bytes:
        """The tag of a frame under ``keyed`` (a BLAKE2b state keyed with one signing key, copied here)."""
        # Length-prefixed key: (key, head+body) pairs cannot shift bytes between them.
        encoded = key.encode()
        mac = keyed.copy()
        mac.update(_KEY_LENGTH.pack(len(encoded)) + encoded + head)
        mac.update(body)
        return mac.digest()


def _keyed_blake2b(secret: bytes) -> Any:
    """A BLAKE2b-128 state keyed with ``secret``, to be copied for each MAC."""
    return hashlib.blake2b(key=secret, digest_size=MAC_BYTES)
