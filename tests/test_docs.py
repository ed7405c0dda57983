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


def readme_layout() -> str:
    """The package map in README.md's Layout section."""
    section = (ROOT / "README.md").read_text().partition("## Layout\n")[2].partition("\n## ")[0]
    return section.partition("```text\n")[2].partition("```")[0]


def test_readme_layout_maps_every_module_and_package_and_nothing_else() -> None:
    """A newcomer finds the one module for a job in the README; a module added or removed updates it."""
    package = ROOT / "velro_cache"
    layout = readme_layout()
    assert layout
    named_top = set(re.findall(r"(?<![\w/])(\w+\.py)\b", layout)) | set(re.findall(r"(?<![\w/])(\w+/)", layout))
    existing_top = {path.name for path in package.glob("*.py") if path.name != "__init__.py"}
    existing_top |= {f"{path.name}/" for path in package.iterdir() if (path / "__init__.py").exists() and path.name != "migrations"}
    assert sorted(existing_top - named_top) == [] and sorted(named_top - existing_top - {"management/", "commands/"}) == []
    # The tiers/, db/, warming/ and telemetry/ lines name their modules: each named one exists, each one is named.
    for folder in ("tiers", "db", "warming", "telemetry"):
        lines = [line for line in layout.splitlines() if line.startswith(f"{folder}/")]
        index = layout.splitlines().index(lines[0])
        block = lines[0]
        for following in layout.splitlines()[index + 1:]:
            if not following.startswith(" "):
                break
            block += following
        modules = {path.stem for path in (package / folder).glob("*.py") if path.name != "__init__.py"}
        assert sorted(module for module in modules if not re.search(rf"\b{module}\b", block)) == [], folder
