"""Every code example of the README runs as written: its Python blocks, its commands for your own
jobs, and its curl lines against a real server."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.live import LiveServer
from tests.processes import ROOT, Served, base_of, cli_env

README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
SHELL = "\n".join(code for lang, code in BLOCKS if lang == "sh")
MODULE = next(code for code in PYTHON if code.startswith("# myjobs.py"))
TIMEOUT = 60


def shell_commands(prefix: str) -> list[str]:
    """The README's shell command lines starting with `prefix`, continuation lines joined and
    trailing comments dropped."""
    joined = SHELL.replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        line = line.strip()
        if line.startswith(prefix):
            commands.append(line.split("   #", 1)[0].strip())
    return commands


def test_the_readme_has_the_examples_this_test_runs():
    assert len(PYTHON) == 3 and MODULE
    assert shell_commands("stepstream run myjobs:orch") and shell_commands("stepstream serve myjobs:orch")
    assert len(shell_commands("curl")) >= 10


def test_the_python_api_example_runs_to_its_end():
    code = next(c for c in PYTHON if "orch.wait(job_id" in c)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT,
                          env=cli_env())
    assert done.returncode == 0, done.stderr


def test_the_mount_example_serves_page_api_and_stream_under_its_prefix():
    code = next(c for c in PYTHON if "Mount(" in c)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    orch = namespace["orch"]
    try:
        with LiveServer(namespace["app"]) as srv, httpx.Client(base_url=srv.url, timeout=TIMEOUT) as client:
            assert client.get("/ops/queue/").status_code == 200
            created = client.post("/ops/queue/api/jobs", json={"definition": "hello"})
            assert created.status_code == 201
            job_id = created.json()["job"]["id"]
            orch.wait(job_id, TIMEOUT)
            with client.stream("GET", "/ops/queue/api/events", params={"job": job_id}) as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                assert "event: end" in stream.read().decode()
    finally:
        orch.shutdown()


def test_your_own_jobs_module_runs_and_serves_with_the_readme_commands(tmp_path: Path):
    (tmp_path / "myjobs.py").write_text(MODULE)
    run = shlex.split(shell_commands("stepstream run myjobs:orch")[0])
    done = subprocess.run([sys.executable, "-m", *run], cwd=tmp_path, env=cli_env(), capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "job completed" in done.stdout
    serve = shlex.split(shell_commands("stepstream serve myjobs:orch")[0])
    with Served(*serve[2:], "--port", "0", cwd=tmp_path) as served:
        base = base_of(served.url())
        assert httpx.get(f"{base}/api/definitions").json()["definitions"][0]["name"] == "crawl"
        assert served.interrupt()[0] == 130
    assert (tmp_path / "stepstream.db").exists(), "serve keeps its history in ./stepstream.db by default"


@pytest.fixture
def demo_server(tmp_path: Path):
    with Served("--demo", "--memory", "--port", "0", "--size", "10", cwd=tmp_path) as served:
        yield base_of(served.url())


def test_every_curl_line_of_the_readme_works_against_a_demo_server(demo_server: str):
    created = httpx.post(f"{demo_server}/api/jobs", json={"definition": "web_crawl", "params": {"size": 10}})
    job_id = created.json()["job"]["id"]
    for command in shell_commands("curl"):
        if "Last-Event-ID: <id>" in command:
            continue
        line = command.replace("http://127.0.0.1:8000", demo_server).replace("m_…", job_id)
        if "-X DELETE" in command:  # a job is deleted once its cancel has settled it
            with httpx.stream("GET", f"{demo_server}/api/events", params={"job": job_id}, timeout=TIMEOUT) as stream:
                assert b"event: end" in stream.read()
        done = subprocess.run(shlex.split(line), capture_output=True, timeout=TIMEOUT)
        assert done.returncode == 0, (command, done.stderr)
        if "-X DELETE" in command:
            assert done.stdout == b"" and httpx.get(f"{demo_server}/api/jobs/{job_id}").status_code == 404
        else:
            assert done.stdout, command
