"""Without redis-py (the extra `stepstream[redis]`) the core works, and whatever selects Redis
says in one line what to install: the command line exits with status 2, Python raises
`MissingDependency`. Here redis-py is hidden from a subprocess (None in `sys.modules`);
tests/test_wheel.py checks the same in a fresh install that does not have it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.processes import cli_env

URL = "redis://127.0.0.1:1/0"  # never reached: the error comes first
LINE = "stepstream: error: the Redis backend needs redis-py: pip install 'stepstream[redis]'\n"
WITHOUT_REDIS_PY = "import sys\nsys.modules['redis'] = None  # `import redis` raises ModuleNotFoundError\n"
CLI = WITHOUT_REDIS_PY + "from stepstream.cli import main\nsys.exit(main(sys.argv[1:]))\n"
APP = """\
from stepstream import Orchestrator, Step

orch = Orchestrator(max_workers=2)
orch.define("hello", [Step("greet", lambda ctx: ctx.log("info", "hello"))])
"""


def without_redis_py(code: str, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=cli_env(**env), capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("args, env", [
    (["serve", "--redis", URL], {}),
    (["serve", "myjobs:orch", "--redis", URL, "--workers", "0"], {}),
    (["serve", "--demo", "--port", "0"], {"STEPSTREAM_REDIS": URL}),
    (["worker", "myjobs:orch", "--redis", URL], {}),
    (["worker", "myjobs:orch"], {"STEPSTREAM_REDIS": URL}),
])
def test_choosing_redis_without_redis_py_is_one_line_naming_the_extra_and_status_2(
        tmp_path: Path, args: list[str], env: dict[str, str]) -> None:
    (tmp_path / "myjobs.py").write_text(APP)
    done = without_redis_py(CLI, *args, cwd=tmp_path, **env)
    assert (done.returncode, done.stderr, done.stdout) == (2, LINE, "")


def test_the_core_serves_and_runs_without_redis_py(tmp_path: Path) -> None:
    done = without_redis_py(CLI, "run", "--demo", "web_crawl", "--size", "3", "--speed", "0", "--params",
                            '{"fail_rate": 0}', cwd=tmp_path, STEPSTREAM_REDIS="")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "job completed" in done.stdout


def test_orchestrator_on_redis_without_redis_py_raises_missing_dependency(tmp_path: Path) -> None:
    code = WITHOUT_REDIS_PY + f"""
from stepstream import MissingDependency, Orchestrator, StepstreamError

elsewhere = Orchestrator()
for choose in (lambda: Orchestrator(redis={URL!r}), lambda: elsewhere.use_redis({URL!r})):
    try:
        choose()
    except MissingDependency as exc:
        assert isinstance(exc, StepstreamError) and isinstance(exc, ImportError), type(exc).__mro__
        print(exc)
    else:
        raise AssertionError("no error without redis-py")
elsewhere.shutdown()
"""
    done = without_redis_py(code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "the Redis backend needs redis-py: pip install 'stepstream[redis]'\n" * 2
