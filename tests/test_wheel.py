"""What users install is what is tested: the sdist and the wheel built from this checkout hold
every module and page file, and the wheel alone, installed in a fresh virtual environment (no
checkout on the path, no extras), serves the demo with its page and runs its jobs, and says in
one line which extra `--redis` needs.

The build (the sdist, then the wheel from it, as `python -m build` does) and the install run once
for the module, ~20-40 s. Nothing here is skipped: a missing `build`, `venv` or index fails.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.test_extras import APP, LINE

ROOT = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT = 600  # a build or an install: they fetch setuptools, and the dependencies, from the index
TIMEOUT = 60
NOWHERE = "redis://127.0.0.1:1/0"  # never reached: without redis-py the error comes first

pytestmark = pytest.mark.timeout(BUILD_TIMEOUT + 120)


@dataclass(frozen=True)
class Dist:
    sdist: Path
    wheel: Path


@dataclass(frozen=True)
class Installed:
    venv: Path  # a fresh virtual environment holding the wheel and its core dependencies only
    home: Path  # a working directory outside the checkout

    def command(self, name: str) -> str:
        return str(self.venv / "bin" / name)


def _env(**extra: str) -> dict[str, str]:
    """This environment without what would lead a process to the checkout or to a deployment."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not k.startswith("STEPSTREAM_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def _run(*argv: str | Path, timeout: float = BUILD_TIMEOUT, **kwargs) -> subprocess.CompletedProcess:
    """Run `argv`, failing the test with its output unless it exits 0."""
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, argv))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


# Not copied to the tree that is built: what a fresh clone lacks. A stale *.egg-info/SOURCES.txt
# matters most: setuptools ships every file it lists under a package as package data, so a
# module missing from the package configuration would still reach the wheel and hide the bug.
# As paths from the top: a package may well have a folder named build or dist.
LOCAL_ONLY = {".git", "build", "dist", ".venv", "venv", ".pytest_cache", ".hypothesis", ".ruff_cache",
              "tests/artifacts", "bench/results.json"}


def _not_in_a_fresh_clone(folder: str, names: list[str]) -> set[str]:
    here = Path(folder).relative_to(ROOT)
    return {n for n in names if n == "__pycache__" or n.endswith(".egg-info") or n.startswith("stepstream.db")
            or (here / n).as_posix() in LOCAL_ONLY}


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


def _package() -> set[str]:
    """Every file of the package in this checkout (its modules and any data), as a path from the
    top of the repository."""
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / "stepstream").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def _page() -> set[str]:
    """Every file of the page (web/), as a path inside web/."""
    return {p.relative_to(ROOT / "web").as_posix() for p in (ROOT / "web").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def test_the_checkout_has_what_these_checks_compare_against() -> None:
    assert {"stepstream/__init__.py", "stepstream/journal/sqlite.py",
            "stepstream/backends/redis/store.py"} <= _package()
    assert {"index.html", "main.js", "style.css"} <= _page() and any(f.startswith("views/") for f in _page())


def test_the_wheel_holds_every_file_of_the_package_and_page_and_nothing_else(dist: Dist) -> None:
    with zipfile.ZipFile(dist.wheel) as wheel:
        names = {n for n in wheel.namelist() if not n.endswith("/")}
    expected = _package() | {f"stepstream/web/{f}" for f in _page()}
    assert not expected - names, f"missing from the wheel: {sorted(expected - names)}"
    code = {n for n in names if ".dist-info/" not in n}
    assert not code - expected, f"in the wheel but not in the checkout's package or page: {sorted(code - expected)}"


def test_the_sdist_holds_every_file_of_the_package_and_page_and_every_test(dist: Dist) -> None:
    with tarfile.open(dist.sdist) as sdist:
        names = {m.name.split("/", 1)[1] for m in sdist.getmembers() if m.isfile() and "/" in m.name}
    tests = {p.relative_to(ROOT).as_posix() for folder in ("tests", "harness") for p in (ROOT / folder).rglob("*.py")
             if "__pycache__" not in p.parts}
    expected = _package() | {f"web/{f}" for f in _page()} | tests | {"pyproject.toml", "setup.py", "README.md"}
    assert not expected - names, f"missing from the sdist: {sorted(expected - names)}"


def test_the_readme_names_the_wheel_that_is_built(dist: Dist) -> None:
    assert f"dist/{dist.wheel.name}" in (ROOT / "README.md").read_text(), "README.md: the wheel's name changed"


@pytest.fixture(scope="module")
def installed(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel, without extras, in a fresh virtual environment: not --system-site-packages,
    where redis-py (installed for the tests) and the editable checkout would be found."""
    venv = tmp_path_factory.mktemp("venv")
    _run(sys.executable, "-m", "venv", venv, env=_env())
    _run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", dist.wheel,
         env=_env())
    home = tmp_path_factory.mktemp("home")
    assert ROOT not in home.parents and ROOT not in venv.parents
    return Installed(venv, home)


def test_the_fresh_install_runs_the_wheel_and_has_no_redis_py(installed: Installed) -> None:
    code = "import importlib.util, stepstream; print(stepstream.__file__); print(importlib.util.find_spec('redis'))"
    done = _run(installed.command("python"), "-c", code, cwd=installed.home, env=_env(), timeout=TIMEOUT)
    where, redis_py = done.stdout.splitlines()
    assert installed.venv in Path(where).parents, f"stepstream imported from {where}, not from the install"
    assert redis_py == "None", f"the core install brought redis-py ({redis_py}): is it a hard dependency again?"


def _serving(proc: subprocess.Popen, stderr: Path) -> str:
    """The base URL once `serve` says it listens (it prints the line only then)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        text = stderr.read_text()
        match = re.search(r"serving on (http://\S+)", text)
        if match:
            return match.group(1).split("?", 1)[0].rstrip("/")
        assert proc.poll() is None, f"stepstream serve exited {proc.returncode}: {text}"
        assert time.monotonic() < deadline, f"stepstream serve did not listen within {TIMEOUT}s: {text}"
        time.sleep(0.05)


def test_the_installed_demo_serves_its_page_and_api_and_runs_a_job_to_completion(installed: Installed) -> None:
    home = installed.home / "demo"
    home.mkdir()
    stderr = home / "stderr.txt"
    with stderr.open("w") as err:  # the SQLite history goes to ./stepstream.db: the journal subpackage
        proc = subprocess.Popen([installed.command("stepstream"), "serve", "--demo", "--size", "5", "--port", "0"],
                                cwd=home, env=_env(), stdout=subprocess.DEVNULL, stderr=err)
    try:
        base = _serving(proc, stderr)
        with httpx.Client(base_url=base, timeout=TIMEOUT) as client:
            health = client.get("/api/health")
            assert health.status_code == 200 and health.json()["status"] == "ok", health.text
            page = client.get("/")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            loads = re.findall(r'(?:src|href)="(static/[^"]+)"', page.text)
            assert loads, page.text
            for path in loads:
                assert client.get(f"/{path}").status_code == 200, path
            for name in sorted(_page()):  # what the page imports in turn (views/...) as well
                served = client.get(f"/static/{name}")
                assert served.status_code == 200 and served.content == (ROOT / "web" / name).read_bytes(), name
            created = client.post("/api/jobs", json={"definition": "nearby_restaurants",
                                                     "params": {"size": 8, "speed": 0, "fail_rate": 0}})
            assert created.status_code == 201, created.text
            job_id = created.json()["job"]["id"]
            with client.stream("GET", "/api/events", params={"job": job_id}) as stream:
                assert "event: end" in stream.iter_lines(), "the job's stream closed without its end"
            job = client.get(f"/api/jobs/{job_id}").json()["job"]
            assert job["status"] == "completed", job
        assert (home / "stepstream.db").is_file()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(TIMEOUT) == 130
        assert "Traceback" not in stderr.read_text(), stderr.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("args, env", [
    (["serve", "--redis", NOWHERE], {}),
    (["serve", "--demo", "--port", "0"], {"STEPSTREAM_REDIS": NOWHERE}),
    (["worker", "myjobs:orch", "--redis", NOWHERE], {}),
])
def test_the_core_install_says_in_one_line_which_extra_redis_needs(
        installed: Installed, args: list[str], env: dict[str, str]) -> None:
    (installed.home / "myjobs.py").write_text(APP)
    done = subprocess.run([installed.command("stepstream"), *args], cwd=installed.home, env=_env(**env),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert (done.returncode, done.stderr, done.stdout) == (2, LINE, "")
