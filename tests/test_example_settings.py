"""The example project configures L2 from the environment, never from whether Redis answered at import.

A worker that imports its settings during a Redis blip must still have L2
configured (the breaker handles the absent Redis and L2 returns when Redis
does); only ``VELRO_EXAMPLE_L2=off`` turns it off. Each case imports the
settings in a fresh interpreter, as a worker would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def cache_of_a_new_worker(**env: str) -> dict:
    code = "import json, example_project.settings as s; print(json.dumps(s.CACHES['default'], default=str))"
    environment = {k: v for k, v in os.environ.items() if k not in ("VELRO_EXAMPLE_L2", "REDIS_URL", "DATABASE_URL")}
    environment.update(env, PYTHONPATH=f"{ROOT}:{ROOT / 'example_project'}")
    out = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True, timeout=60)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_worker_that_starts_while_redis_is_down_still_has_l2():
    assert cache_of_a_new_worker(REDIS_URL=DEAD_REDIS)["LOCATION"] == DEAD_REDIS


def test_only_the_explicit_switch_turns_l2_off():
    assert "LOCATION" not in cache_of_a_new_worker(REDIS_URL=DEAD_REDIS, VELRO_EXAMPLE_L2="off")


def test_a_bad_switch_is_an_error_not_a_guess():
    with pytest.raises(subprocess.CalledProcessError):
        cache_of_a_new_worker(VELRO_EXAMPLE_L2="maybe")


def test_the_demo_probe_decides_once_from_redis():
    probe = [sys.executable, "-m", "example_project.redis_probe"]
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "example_project"), "REDIS_URL": DEAD_REDIS}
    assert subprocess.run(probe, env=environment, capture_output=True, text=True, check=True).stdout.strip() == "off"
