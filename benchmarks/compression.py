"""Compression codecs on the bodies TieredCache actually compresses: lz4 vs zstd vs none.

velro_cache.serializers compresses msgpack bodies of 1 KiB and more with LZ4
(block format). Compression is paid once per ``set`` but decompression on
every read of a value held compressed, so decompression time weighs most; the
size ratio matters for Redis memory and network. This benchmark backs (or
refutes) that choice with the real bodies: values are encoded by the
serializer itself with compression disabled, then each codec is timed on them.

Run: ``python -m benchmarks.compression`` (about half a minute) or ``--quick``.
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
from collections.abc import Callable
from typing import Any

import lz4.block

from velro_cache.serializers import Serializer

from . import common
from .common import Case, Report

try:
    import zstandard
except ImportError:  # not a dependency of velro-cache itself
    zstandard = None

FULL = {"calls": 20_000, "rounds": 10}
QUICK = {"calls": 200, "rounds": 2}

SEED = 20240917
WORDS = (
    "the a of to and in is for on with as by at from that this render image model prompt team owner editor "
    "viewer generation media frame light color shadow water fox dusk dawn city forest river portrait style "
    "detailed soft sharp wide angle lens film grain palette warm cold neon pastel sketch oil paint studio"
).split()


# -- payloads ------------------------------------------------------------------------------------


def _record_2k(rng: random.Random) -> dict[str, Any]:
    """A generation's detail view, as an API handler would cache it."""
    return {
        "id": 456,
        "status": "done",
        "prompt": " ".join(rng.choice(WORDS) for _ in range(110)),
        "negative_prompt": " ".join(rng.choice(WORDS) for _ in range(15)),
        "owner": {"id": 17, "username": "mira", "display_name": "Mira K.", "avatar": "https://media.velro.example/u/17.webp"},
        "team": {"id": 3, "name": "Watercolor Lab", "slug": "watercolor-lab", "plan": "studio"},
        "params": {"model": "velro-xl-2", "steps": 30, "cfg": 6.5, "seed": 2847561, "width": 1024, "height": 1024, "sampler": "dpmpp-2m"},
        "media": [
            {"kind": kind, "url": f"https://media.velro.example/g/456/{kind}.webp", "bytes": rng.randrange(10**5, 10**6), "width": w, "height": w}
            for kind, w in (("full", 1024), ("large", 768), ("medium", 512), ("thumb", 256))
        ],
        "created": "2024-09-17T12:04:11.512Z",
        "updated": "2024-09-17T12:04:39.007Z",
        "timings_ms": {"queue": 812.0, "render": 4127.5, "upload": 233.25},
        "permissions": {"read": True, "write": True, "share": False, "delete": False},
        "tags": ["watercolor", "fox", "dusk", "animals", "landscape"],
        "variations": [{"id": 900 + i, "seed": rng.randrange(10**7), "thumb": f"https://media.velro.example/g/{900 + i}/thumb.webp"} for i in range(7)],
    }


def _page_16k(rng: random.Random) -> str:
    words = []
    while sum(map(len, words)) + len(words) < 16 * 1024:
        words.append(rng.choice(WORDS))
    return " ".join(words)[: 16 * 1024]


def _blob_64k(rng: random.Random) -> bytes:
    """A float32 embedding-like array: binary, barely compressible."""
    return struct.pack("<16384f", *(rng.gauss(0.0, 0.3) for _ in range(16384)))


def payloads() -> dict[str, bytes]:
    """The msgpack bodies the serializer would hand to the compressor."""
    rng = random.Random(SEED)
    serializer = Serializer(signing_key=b"benchmark", compress_min_bytes=sys.maxsize)
    values = {
        "2 KiB record": _record_2k(rng),
        "4 KiB list of records": common.sample_values()["4 KiB list of 30 dicts"],
        "16 KiB page of text": _page_16k(rng),
        "64 KiB blob": _blob_64k(rng),
    }
    return {name: serializer.encode(value)[1] for name, value in values.items()}


# -- codecs ---------------------------------------------------------------------------------------


def _identity(body: bytes) -> bytes:
    return body


def codecs() -> dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]]:
    """Name -> (compress, decompress), each with its reusable state built once, as a server would."""
    table: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
        "none": (_identity, _identity),
        "lz4 (block)": (lz4.block.compress, lz4.block.decompress),
    }
    if zstandard is not None:
        decompressor = zstandard.ZstdDecompressor()
        for level in (1, 3):
            table[f"zstd -{level}"] = (zstandard.ZstdCompressor(level=level).compress, decompressor.decompress)
    return table


def _measure(body: bytes, table: dict, plan: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Size and median compress/decompress time of every codec on one body."""
    cases, sizes = {}, {}
    for name, (compress, decompress) in table.items():
        packed = compress(body)
        if decompress(packed) != body:
            raise AssertionError(f"{name} did not round-trip")
        sizes[name] = len(packed)
        cases[name, "compress"] = Case(compress, (body,))
        cases[name, "decompress"] = Case(decompress, (packed,))
    samples = common.interleaved(cases, plan["calls"], plan["rounds"], warmup=200)
    return {
        name: {
            "compressed B": sizes[name],
            "ratio": len(body) / sizes[name],
            "compress µs": common.median_us(samples[name, "compress"]),
            "decompress µs": common.median_us(samples[name, "decompress"]),
        }
        for name in table
    }


def run(args: argparse.Namespace) -> Report:
    plan = QUICK if args.quick else FULL
    table = codecs()
    floor = common.timer_floor_ns()
    rows, findings = [], []
    for payload, body in payloads().items():
        measured = _measure(body, table, plan)
        lz4_decompress = measured["lz4 (block)"]["decompress µs"]
        for codec, row in measured.items():
            row = {"payload": payload, "body B": len(body), "codec": codec, **row}
            row["decompress × lz4"] = common.ratio(row["decompress µs"], lz4_decompress)
            rows.append(row)
        fastest = min((m["decompress µs"], name) for name, m in measured.items() if name != "none")[1]
        smallest = min((m["compressed B"], name) for name, m in measured.items())[1]
        findings.append(f"- {payload}: fastest decompression {fastest}; smallest {smallest}.")
    notes = [
        "`ratio` = body / compressed size (higher is smaller). `none` returns the body as it is:",
        f"the cost of the call alone. Times are medians per call and include the timer ({floor:.0f} ns).",
        "`decompress × lz4` is what a read pays relative to the current choice.",
    ]
    if zstandard is None:
        notes.append("zstandard is not installed, so zstd was not measured (`pip install zstandard`).")
    report = Report(
        "compression",
        "Compression of cached bodies: lz4 vs zstd vs none",
        [
            "Generated by `python -m benchmarks.compression`. Bodies are the msgpack bytes",
            "`velro_cache.serializers.Serializer.encode` produces before compressing; each codec runs",
            f"{plan['calls']:,} times per operation, timed call by call, codecs interleaved in {plan['rounds']} rounds.",
            "zstd runs with a reused `ZstdCompressor`/`ZstdDecompressor`, its fastest usage.",
        ],
        quick=args.quick,
    )
    columns = ["payload", "body B", "codec", "compressed B", "ratio", "compress µs", "decompress µs", "decompress × lz4"]
    report.table("Codecs per payload", columns, rows, notes)
    report.table("Findings", ["finding"], [{"finding": line[2:]} for line in findings])
    return report


def main(argv: list[str] | None = None) -> int:
    return common.cli("compression", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
