"""Fetch django-redis's own backend test suite for the installed django-redis version.

As scripts/fetch_django_tests.py does for Django: the suite ships in the
source distribution (tests/test_backend.py, tests/test_backend_sorted_sets.py),
not in the wheel. We download the sdist of exactly the installed version once
and extract those two files into
.cache/django-redis-tests/<version>/django_redis_suite/, a package of its own
name (the sdist's is "tests", which would shadow ours), where
tests/test_django_redis_suite.py imports them from.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version as installed_version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = ("test_backend.py", "test_backend_sorted_sets.py")
PACKAGE = "django_redis_suite"


def suite_dir(version: str) -> Path:
    return ROOT / ".cache" / "django-redis-tests" / version


def main() -> int:
    version = installed_version("django-redis")
    target = suite_dir(version) / PACKAGE
    if all((target / name).exists() for name in FILES):
        print(f"django-redis {version} backend suite: {target}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:", "-d", tmp, f"django-redis=={version}"],
            check=True,
        )
        archive = next(Path(tmp).glob("*.tar.gz"))
        prefix = f"{archive.name[: -len('.tar.gz')]}/tests/"
        with tarfile.open(archive) as tar:
            found = {m.name[len(prefix) :]: m for m in tar.getmembers() if m.name.lower().startswith(prefix.lower())}
            missing = [name for name in FILES if name not in found]
            if missing:
                print(f"no tests/{', '.join(missing)} in {archive.name}", file=sys.stderr)
                return 1
            target.mkdir(parents=True, exist_ok=True)
            (target / "__init__.py").write_text("")
            for name in FILES:
                (target / name).write_bytes(tar.extractfile(found[name]).read())
    print(f"django-redis {version} backend suite: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
