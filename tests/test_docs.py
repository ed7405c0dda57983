"""Docs that describe the repository keep up with it."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_testing_md_names_every_test_module() -> None:
    """docs/testing.md is where a newcomer looks for what a test module pins."""
    named = re.findall(r"`(test_[\w*]+\.py)`", (ROOT / "docs" / "testing.md").read_text())
    modules = sorted(path.name for path in (ROOT / "tests").glob("test_*.py"))
    unlisted = [module for module in modules if not any(fnmatch.fnmatch(module, name) for name in named)]
    assert unlisted == []
