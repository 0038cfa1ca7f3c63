"""What users install is what is tested: the sdist and the wheel built from this checkout hold
every module and page file, and the wheel alone, installed in a fresh virtual environment (no
checkout on the path, no extras), serves the demo with its page and runs its jobs, and says in
one line which extra `--redis` needs.

The build (the sdist, then the wheel from it, as `python -m build` does) and the install run once
for the module, ~20-40 s. Nothing here is skipped: a missing `build`, `venv` or index fails.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT = 600  # a first build fetches setuptools for its isolated environment

pytestmark = pytest.mark.timeout(BUILD_TIMEOUT + 120)


@dataclass(frozen=True)
class Dist:
    sdist: Path
    wheel: Path


def _run(*argv: str | Path, timeout: float = BUILD_TIMEOUT, **kwargs) -> subprocess.CompletedProcess:
    """Run `argv`, failing the test with its output unless it exits 0."""
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, argv))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


# Not copied to the tree that is built: what a fresh clone lacks. A stale *.egg-info/SOURCES.txt
# matters most: setuptools ships every file it lists under a package as package data, so a
# module missing from the package configuration would still reach the wheel and hide the bug.
# At the top only: a package may well have a folder named build or dist.
LOCAL_ONLY = {".git", "build", "dist", ".venv", "venv", ".pytest_cache", ".hypothesis", ".ruff_cache"}


def _not_in_a_fresh_clone(folder: str, names: list[str]) -> set[str]:
    top = Path(folder) == ROOT
    return {n for n in names if n == "__pycache__" or n.endswith(".egg-info")
            or (top and (n in LOCAL_ONLY or n.startswith("stepstream.db")))}


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    """The sdist and the wheel of this checkout, the wheel built from the sdist (so a file the
    sdist lacks is missing from the wheel too), from a copy of the checkout as a fresh clone has
    it: nothing left by an earlier build or editable install takes part, and nothing is written
    into the checkout."""
    source = tmp_path_factory.mktemp("source") / "stepstream"
    shutil.copytree(ROOT, source, ignore=_not_in_a_fresh_clone)
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--outdir", out, source)  # `build` comes with the test extra
    sdists, wheels = sorted(out.glob("stepstream-*.tar.gz")), sorted(out.glob("stepstream-*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(p.name for p in out.iterdir())
    return Dist(sdists[0], wheels[0])


def _modules() -> set[str]:
    """Every module of the package in this checkout, as a path from the top of the repository."""
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / "stepstream").rglob("*.py")
            if "__pycache__" not in p.parts}


def _page() -> set[str]:
    """Every file of the page (web/), as a path inside web/."""
    return {p.relative_to(ROOT / "web").as_posix() for p in (ROOT / "web").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def test_the_checkout_has_what_these_checks_compare_against() -> None:
    assert {"stepstream/__init__.py", "stepstream/journal/sqlite.py", "stepstream/redisbackend/store.py"} <= _modules()
    assert {"index.html", "main.js", "style.css"} <= _page() and any(f.startswith("views/") for f in _page())


def test_the_wheel_holds_every_module_and_page_file_and_nothing_else(dist: Dist) -> None:
    with zipfile.ZipFile(dist.wheel) as wheel:
        names = {n for n in wheel.namelist() if not n.endswith("/")}
    expected = _modules() | {f"stepstream/web/{f}" for f in _page()}
    assert not expected - names, f"missing from the wheel: {sorted(expected - names)}"
    code = {n for n in names if ".dist-info/" not in n}
    assert not code - expected, f"in the wheel but not in the checkout's package or page: {sorted(code - expected)}"


def test_the_sdist_holds_every_module_page_file_and_test(dist: Dist) -> None:
    with tarfile.open(dist.sdist) as sdist:
        names = {m.name.split("/", 1)[1] for m in sdist.getmembers() if m.isfile() and "/" in m.name}
    tests = {p.relative_to(ROOT).as_posix() for folder in ("tests", "harness") for p in (ROOT / folder).rglob("*.py")
             if "__pycache__" not in p.parts}
    expected = _modules() | {f"web/{f}" for f in _page()} | tests | {"pyproject.toml", "setup.py", "README.md"}
    assert not expected - names, f"missing from the sdist: {sorted(expected - names)}"
