"""The sdist and wheel a new user installs: licence, docs, metadata, no stray tests.

Both are built once, from a copy of the source tree (so no ``build/`` or
``*.egg-info`` lands in the checkout), with ``python -m build --no-isolation``
on the running interpreter: nothing is downloaded, so the test extra carries
``build`` and a new enough ``setuptools`` (see pyproject.toml).
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from email.message import Message
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv*", ".cache", "__pycache__", "*.pyc", "build", "dist", "*.egg-info", "*.sqlite3*"
)


class Built:
    """One build's sdist and wheel: member names and metadata of each."""

    def __init__(self, out: Path) -> None:
        (self.sdist_path,) = out.glob("*.tar.gz")
        (self.wheel_path,) = out.glob("*.whl")
        with tarfile.open(self.sdist_path) as sdist:
            # Drop the "velro_cache-0.1.0/" every member starts with.
            self.sdist = {name.partition("/")[2] for name in sdist.getnames()}
            self.sdist_metadata = _metadata(sdist.extractfile(f"{sdist.getnames()[0].partition('/')[0]}/PKG-INFO").read())
        with zipfile.ZipFile(self.wheel_path) as wheel:
            self.wheel = set(wheel.namelist())
            (metadata,) = [name for name in self.wheel if name.endswith(".dist-info/METADATA")]
            self.wheel_metadata = _metadata(wheel.read(metadata))


def _metadata(raw: bytes) -> Message:
    return Parser().parsestr(raw.decode())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    source = tmp_path_factory.mktemp("source") / "velro-cache"
    out = tmp_path_factory.mktemp("dist")
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (
        "building failed; the test extra needs build>=1.2 and setuptools>=77:\n" + result.stdout[-3000:] + result.stderr[-3000:]
    )
    return Built(out)


def test_the_license_ships_in_both(built: Built) -> None:
    assert "LICENSE" in built.sdist
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in built.wheel)
    assert "BSD 3-Clause" in (ROOT / "LICENSE").read_text()


def test_the_sdist_carries_every_doc(built: Built) -> None:
    docs = {f"docs/{path.name}" for path in (ROOT / "docs").glob("*.md")}
    assert docs and docs <= built.sdist


def test_no_tests_ship(built: Built) -> None:
    """Tests need the example project, benchmarks and real servers: they stay in the repository."""
    assert not [name for name in built.sdist if name.startswith("tests/")]
    assert not [name for name in built.wheel if name.startswith("tests/")]


def test_the_wheel_is_typed_and_carries_no_phantom_package_data(built: Built) -> None:
    assert "velro_cache/py.typed" in built.wheel
    # Templates and static files ship exactly as the source tree has them (the dashboard's), nothing phantom.
    shipped = {name for name in built.wheel if "/templates/" in name or "/static/" in name}
    present = {str(path.relative_to(ROOT)) for folder in ("templates", "static") for path in (ROOT / "velro_cache" / folder).rglob("*") if path.is_file()}
    assert shipped == present and "velro_cache/templates/velro_cache/dashboard.html" in shipped


@pytest.mark.parametrize("which", ["sdist_metadata", "wheel_metadata"])
def test_metadata_names_the_license_and_the_project_urls(built: Built, which: str) -> None:
    metadata = getattr(built, which)
    assert metadata["License-Expression"] == "BSD-3-Clause"
    urls = dict(entry.split(", ", 1) for entry in metadata.get_all("Project-URL"))
    assert urls == PYPROJECT["project"]["urls"]
    assert {"Homepage", "Documentation", "Source", "Issues"} <= set(urls)


def test_every_export_is_typed_and_resolves() -> None:
    """``__all__``, the lazy map and the type checker's imports name the same objects."""
    import velro_cache

    exports = set(velro_cache.__all__) - {"__version__"}
    assert exports == set(velro_cache._LAZY)
    source = (ROOT / "velro_cache" / "__init__.py").read_text()
    checked = source.partition("if TYPE_CHECKING:")[2].partition("__all__")[0]
    assert {name for name in exports if re.search(rf"\b{name}\b", checked)} == exports
    for name in exports:
        module = importlib.import_module(velro_cache._LAZY[name])
        assert getattr(velro_cache, name) is getattr(module, name)


def test_readme_links_work_on_the_package_page() -> None:
    """PyPI renders the README without the repository: every link is absolute, under the declared Source."""
    source = PYPROJECT["project"]["urls"]["Source"]
    links = re.findall(r"\]\(([^)]+)\)", (ROOT / "README.md").read_text())
    assert links
    assert [link for link in links if not link.startswith("https://")] == []
    for link in links:
        if not link.startswith(source):
            continue
        path = re.sub(rf"^{re.escape(source)}/(blob|tree)/main/?", "", link)
        assert (ROOT / path).exists(), link
    doc_links = {link for link in links if "/docs/" in link}
    assert {f"{source}/blob/main/docs/{path.name}" for path in (ROOT / "docs").glob("*.md")} == doc_links


def test_every_exception_velro_cache_defines_is_importable_from_velro_cache_exceptions() -> None:
    """One exceptions module: a caller catching what velro-cache raises imports it from one place.

    Private classes (a leading underscore) are control flow that never leaves
    the module defining them, so they may stay there.
    """
    import pkgutil

    import velro_cache
    from velro_cache import exceptions

    elsewhere = []
    for info in pkgutil.walk_packages(velro_cache.__path__, "velro_cache."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == info.name
                    and not name.startswith("_") and info.name != exceptions.__name__):
                elsewhere.append(f"{info.name}.{name}")
    assert elsewhere == []
