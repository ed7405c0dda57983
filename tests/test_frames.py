"""Every frame in Redis authenticated, header and key included; integers parsed strictly; key rotation.

The attacker here is anyone who can write to Redis but does not hold the
signing key: they write bytes straight into the keys of a real Redis (or
Redis Cluster), and another "process" (a TieredCache with its own L1) reads.
Whatever they write must be a counted miss, never a value, and a frame that
fails verification must stay where it is (it may be another deployment's).
"""

from __future__ import annotations

import collections
import struct
import time

import msgpack
import pytest

from tests.support import behind

# What a msgpack frame of the previous release looked like: codec byte 0xA1,
# expiry float64, loader seconds float32, then the body, with no MAC at all.
OLD_HEADER = b"\xa1" + struct.pack(">d", 0.0) + struct.pack(">f", 0.0)


def _corrupt_count(cache) -> int:
    return cache.stats()["totals"]["corrupt"]


def test_a_forged_msgpack_allow_decision_is_never_served(l2_cache, make_cache):
    """Before: a msgpack frame carried no MAC, so anyone could write an "allow"."""
    writer, reader = l2_cache, make_cache(like=l2_cache)
    raw = behind(writer)
    forged = {
        "old-format": OLD_HEADER + msgpack.packb(True),
        "new-format-zero-mac": b"\xb1" + struct.pack(">d", 0.0) + struct.pack(">f", 0.0) + b"\x00" * 16 + msgpack.packb(True),
        "new-format-no-mac": b"\xb1" + struct.pack(">d", 0.0) + struct.pack(">f", 0.0) + msgpack.packb(True),
    }
    for name, data in forged.items():
        raw.set(reader.make_key(f"authz:decision:{name}"), data)
    for name, data in forged.items():
        assert reader.get(f"authz:decision:{name}", "miss") == "miss", name
        assert raw.get(reader.make_key(f"authz:decision:{name}")) == data, f"{name} must not be deleted"
    assert reader.get_many([f"authz:decision:{name}" for name in forged]) == {}
    assert not any(reader.has_key(f"authz:decision:{name}") for name in forged)
    assert reader.fetch_authoritative([f"authz:decision:{name}" for name in forged]) == {}
    assert _corrupt_count(reader) == 3 * len(forged)


NOT_WHAT_INCRBY_WRITES = [b"1_000", b" 1", b"1 ", b"+1", b"01", b"-0", b"00", b"1e3", b"0x10", b"\xd9\xa1"]
OUTSIDE_64_BITS = [b"9223372036854775808", b"-9223372036854775809"]
WHAT_INCRBY_WRITES = [(b"0", 0), (b"7", 7), (b"-42", -42), (b"9223372036854775807", 2**63 - 1), (b"-9223372036854775808", -(2**63))]


@pytest.mark.parametrize("data", NOT_WHAT_INCRBY_WRITES + OUTSIDE_64_BITS)
def test_raw_integers_are_parsed_as_strictly_as_incrby_writes_them(l2_cache, make_cache, data):
    """Before: int() read b"1_000" as 1000 and b" 1" as 1."""
    reader = make_cache(like=l2_cache)
    raw = behind(l2_cache)
    raw.set(reader.make_key("n"), data)
    assert reader.get("n", "miss") == "miss"
    assert raw.get(reader.make_key("n")) == data
    assert _corrupt_count(reader) == 1


@pytest.mark.parametrize("data, value", WHAT_INCRBY_WRITES)
def test_what_incrby_writes_reads_back(l2_cache, make_cache, data, value):
    raw = behind(l2_cache)
    raw.set(l2_cache.make_key("n"), data)
    assert make_cache(like=l2_cache).get("n") == value
    assert l2_cache.incr("n", 0) == value


def test_a_genuine_frame_copied_to_another_key_does_not_verify(l2_cache, make_cache):
    """The MAC binds the frame to its key: alice's allow cannot become mallory's."""
    writer, reader = l2_cache, make_cache(like=l2_cache)
    raw = behind(writer)
    writer.set("authz:alice:doc1", {"allow": True})
    writer.set("authz:mallory:doc1", {"allow": False})
    stolen = raw.get(writer.make_key("authz:alice:doc1"))
    raw.set(writer.make_key("authz:mallory:doc1"), stolen)
    assert reader.get("authz:mallory:doc1", "miss") == "miss"
    assert reader.get("authz:alice:doc1") == {"allow": True}
    # Another cache version of the same key is another key, too.
    raw.set(writer.make_key("authz:alice:doc1", version=2), stolen)
    assert reader.get("authz:alice:doc1", "miss", version=2) == "miss"


def test_a_tampered_header_does_not_verify(l2_cache, make_cache):
    """The expiry is inside the MAC: pushing it far out would let an L1 keep a copy longer than L2."""
    writer, reader = l2_cache, make_cache(like=l2_cache)
    raw = behind(writer)
    writer.set("k", "value", timeout=30)
    full = writer.make_key("k")
    data = raw.get(full)
    for start, patch in ((1, struct.pack(">d", time.time() + 10**6)), (9, struct.pack(">f", 5.0)), (0, b"\xb3")):
        tampered = data[:start] + patch + data[start + len(patch) :]
        raw.set(full, tampered)
        assert reader.get("k", "miss") == "miss", start
        assert raw.get(full) == tampered


def test_frames_of_the_previous_release_are_a_miss_and_stay(l2_cache, make_cache):
    """A rolling deploy: old processes' frames (format 1) read as a miss here, and are not deleted."""
    reader = make_cache(like=l2_cache)
    raw = behind(l2_cache)
    old = OLD_HEADER + msgpack.packb({"page": 1})
    raw.set(reader.make_key("page"), old)
    assert reader.get("page", "miss") == "miss"
    assert raw.get(reader.make_key("page")) == old
    assert reader.get_or_set("page", {"page": 2}) == {"page": 2}  # a miss fills as usual


def test_deployments_with_other_keys_never_delete_each_others_entries(l2_cache, make_cache, settings):
    """Before: a pickle signed with another key was deleted on read, so two deployments erased each other."""
    ours = l2_cache
    theirs = make_cache(like=ours, options={"SIGNING_KEY": "another deployment"})
    raw = behind(ours)
    value = collections.OrderedDict(a=1)  # not plain data: the pickle path
    theirs.set("shared", value)
    assert ours.get("shared", "miss") == "miss"
    assert make_cache(like=ours).get("shared", "miss") == "miss"
    assert raw.exists(ours.make_key("shared"))
    assert make_cache(like=ours, options={"SIGNING_KEY": "another deployment"}).get("shared") == value


def test_a_secret_key_rotation_keeps_every_entry_readable(l2_cache, make_cache, settings):
    """Django's rotation: new SECRET_KEY, the old one in SECRET_KEY_FALLBACKS. Before: fallbacks were ignored."""
    settings.SECRET_KEY = "old-secret"
    settings.SECRET_KEY_FALLBACKS = []
    old_process = make_cache(like=l2_cache)
    old_process.set("plain", {"a": 1})
    old_process.set("pickled", collections.OrderedDict(b=2))
    settings.SECRET_KEY = "new-secret"
    settings.SECRET_KEY_FALLBACKS = ["old-secret"]
    new_process = make_cache(like=l2_cache)
    assert new_process.get("plain") == {"a": 1}
    assert new_process.get("pickled") == collections.OrderedDict(b=2)
    new_process.set("written-after", [3])
    # The old process, still running, reads new frames as misses and deletes nothing.
    assert make_cache(like=l2_cache, options={"SIGNING_KEY": "old-secret-is-not-this"}).get("written-after", "miss") == "miss"
    settings.SECRET_KEY = "old-secret"
    settings.SECRET_KEY_FALLBACKS = []
    assert make_cache(like=l2_cache).get("written-after", "miss") == "miss"
    assert behind(l2_cache).exists(l2_cache.make_key("written-after"))
    settings.SECRET_KEY = "new-secret"
    assert make_cache(like=l2_cache).get("written-after") == [3]


def test_signing_key_fallbacks_verify_but_never_sign(l2_cache, make_cache):
    before = make_cache(like=l2_cache, options={"SIGNING_KEY": "k1"})
    before.set("k", "v")
    after = make_cache(like=l2_cache, options={"SIGNING_KEY": "k2", "SIGNING_KEY_FALLBACKS": ["k1"]})
    assert after.get("k") == "v"
    after.set("k2", "w")
    assert make_cache(like=l2_cache, options={"SIGNING_KEY": "k1"}).get("k2", "miss") == "miss"
    assert make_cache(like=l2_cache, options={"SIGNING_KEY": "k2"}).get("k2") == "w"


def test_touch_re_signs_the_frame_with_its_new_expiry(l2_cache, make_cache):
    """touch cannot rewrite the expiry inside Redis any more (it is MAC'd): it re-signs, and a reader promotes it right."""
    writer = l2_cache
    raw = behind(writer)
    writer.set("k", {"v": 1}, timeout=5)
    writer.set("n", 5, timeout=5)
    assert writer.touch("k", 500) is True
    assert writer.touch("n", None) is True
    full = writer.make_key("k")
    frame = writer._serializer.unframe(raw.get(full), key=full)
    assert 400 < frame.expires_at - time.time() <= 500
    assert 400_000 < raw.pttl(full) <= 500_000
    assert raw.pttl(writer.make_key("n")) == -1 and raw.get(writer.make_key("n")) == b"5"
    assert make_cache(like=writer).get("k") == {"v": 1}
    # A foreign value is a miss to touch as well, and left alone.
    raw.set(writer.make_key("foreign"), b"\xb1garbage")
    assert writer.touch("foreign", 100) is False
    assert raw.get(writer.make_key("foreign")) == b"\xb1garbage"
