"""Fetch Django's own cache test suite for the installed Django version.

The suite ships in Django's source distribution (tests/cache/), not in the
wheel. We download the sdist of exactly the installed version from PyPI once
and extract tests/cache into .cache/django-tests/<version>/cache, where the
contract tests import it from.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import django

ROOT = Path(__file__).resolve().parent.parent


def suite_dir(version: str) -> Path:
    return ROOT / ".cache" / "django-tests" / version


def main() -> int:
    version = django.__version__
    target = suite_dir(version)
    if (target / "cache" / "tests.py").exists():
        print(f"Django {version} cache suite: {target / 'cache'}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:", "-d", tmp, f"django=={version}"],
            check=True,
        )
        archive = next(Path(tmp).glob("*.tar.gz"))
        prefix = f"{archive.name[: -len('.tar.gz')]}/tests/cache/"
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.lower().startswith(prefix.lower()) and m.isfile()]
            if not members:
                print(f"no tests/cache in {archive.name}", file=sys.stderr)
                return 1
            (target / "cache").mkdir(parents=True, exist_ok=True)
            for member in members:
                dest = target / "cache" / member.name[len(prefix) :]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tar.extractfile(member).read())
    print(f"Django {version} cache suite: {target / 'cache'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
