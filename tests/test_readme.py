"""Every code example of the README runs as written: its Python blocks, its commands for your own
jobs, its curl lines against a real server, and its Redis deployment (machine A's redis-server
line, a server and a worker) on this machine."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from harness.live import LiveServer, sse_events
from harness.processes import ROOT, Served, base_of, cli_env
from tests.redisserver import RedisServer, free_port, require_redis_server

README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
SHELL = "\n".join(code for lang, code in BLOCKS if lang == "sh")
MODULE = next(code for code in PYTHON if code.startswith("# myjobs.py"))
CELERY_MODULE = next(code for code in PYTHON if code.startswith("# celeryjobs.py"))
TIMEOUT = 60
README_REDIS = "redis://A:6379/0"  # machine A of the README's deployment


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
    assert len(PYTHON) == 5 and MODULE and CELERY_MODULE
    assert shell_commands("stepstream run myjobs:orch") and shell_commands("stepstream serve myjobs:orch")
    assert len(shell_commands("curl")) >= 10
    assert len(shell_commands("redis-server")) == 1
    assert [c for c in shell_commands("stepstream serve myjobs:orch") if README_REDIS in c]
    assert [c for c in shell_commands("stepstream worker myjobs:orch") if README_REDIS in c]
    assert next(c for c in PYTHON if "use_redis(" in c)


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


# ---------------------------------------------------------------- the Redis deployment


@pytest.fixture
def readme_redis(tmp_path: Path):
    """Machine A: the README's redis-server line, run here on loopback, a free port and a temp dir
    (later options win); its URL."""
    executable = require_redis_server()
    line = shlex.split(shell_commands("redis-server")[0])
    assert line[0] == "redis-server"
    port = free_port()
    proc = subprocess.Popen([executable, *line[1:], "--bind", "127.0.0.1", "--port", str(port),
                             "--dir", str(tmp_path), "--save", ""],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_connect_timeout=1)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except (redis.ConnectionError, redis.BusyLoadingError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("the README's redis-server line did not start a server") from None
                time.sleep(0.02)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.kill()
        proc.wait(10)


def redis_command(prefix: str, url: str) -> list[str]:
    """The README's Redis command line starting with `prefix`, with machine A's URL made `url`."""
    line = next(c for c in shell_commands(prefix) if README_REDIS in c)
    return shlex.split(line.replace(README_REDIS, url))


def test_the_redis_deployment_of_the_readme_runs_jobs_on_its_worker(tmp_path: Path, readme_redis: str):
    """A server that runs no work (`--workers 0`) and a worker, as on machines A and B: a job
    started through the server runs on the worker; both stop on a signal."""
    (tmp_path / "myjobs.py").write_text(MODULE)
    serve = redis_command("stepstream serve myjobs:orch", readme_redis)
    worker = redis_command("stepstream worker myjobs:orch", readme_redis)
    assert "--workers" in serve and serve[serve.index("--workers") + 1] == "0"
    token = "the-same-token-on-every-server"
    with Served(*serve[2:], "--port", "0", cwd=tmp_path, STEPSTREAM_TOKEN=token) as served, \
            Served(*worker[2:], cwd=tmp_path, command="worker") as working:
        base = base_of(served.url())
        assert "run here by 0 worker threads" in served.stderr()
        working.wait_for("worker running crawl")
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base, headers=auth, timeout=TIMEOUT) as client:
            created = client.post("/api/jobs", json={"definition": "crawl", "params": {"seeds": ["a", "b", "c"]}})
            assert created.status_code == 201, created.text
            job_id = created.json()["job"]["id"]
            with client.stream("GET", "/api/events", params={"job": job_id}) as stream:
                assert any(event["event"] == "end" for event in sse_events(stream))
            job = client.get(f"/api/jobs/{job_id}").json()["job"]
            assert job["status"] == "completed" and job["progress"]["completed"] == 3
            logs = client.get(f"/api/jobs/{job_id}/logs", params={"format": "text"}).text
            assert "fetched c" in logs and "report written" in logs
        assert served.interrupt()[0] == 130
        working.proc.send_signal(signal.SIGTERM)
        assert working.proc.wait(TIMEOUT) == 143
        assert "Traceback" not in served.stderr() + working.stderr()
    assert not (tmp_path / "stepstream.db").exists(), "with --redis nothing is kept in ./stepstream.db"


def test_the_redis_python_example_runs_to_its_end(tmp_path: Path):
    """The README's `use_redis` example, next to its `myjobs.py`, against a real redis-server:
    the same process serves as its own worker."""
    (tmp_path / "myjobs.py").write_text(MODULE)
    code = next(c for c in PYTHON if "use_redis(" in c)
    with RedisServer() as server:
        program = code.replace("redis://127.0.0.1:6379/0", server.url)
        assert program != code
        done = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True,
                              timeout=TIMEOUT, env=cli_env())
        assert done.returncode == 0, done.stderr
        assert int(server.client().get("stepstream:seq")) > 0, "the job's changes were committed to Redis"


def test_the_celery_example_of_the_readme_runs_a_job_on_a_celery_worker(tmp_path: Path):
    """The README's `celeryjobs.py`, its `celery -A … worker` line and its `stepstream serve … --celery`
    line against a real redis-server: the Celery task spawned as a child ran on the Celery
    worker, its `logging` line in its step."""
    (tmp_path / "celeryjobs.py").write_text(CELERY_MODULE)
    with RedisServer(durable=False) as server:
        env = {"STEPSTREAM_REDIS": server.url}
        celery_line = shlex.split(next(c for c in shell_commands("celery -A celeryjobs:celery_app worker")))
        serve = redis_command("stepstream serve celeryjobs:orch", server.url)
        worker_env = cli_env(**env)
        worker_env["PYTHONPATH"] = f"{tmp_path}:{worker_env['PYTHONPATH']}"
        worker = subprocess.Popen([sys.executable, "-m", "celery", *celery_line[1:], "--without-mingle",
                                   "--without-gossip"], cwd=tmp_path, env=worker_env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            with Served(*serve[2:], "--port", "0", cwd=tmp_path, **env) as served:
                base = base_of(served.url())
                with httpx.Client(base_url=base, timeout=TIMEOUT) as client:
                    created = client.post("/api/jobs", json={"definition": "crawl", "params": {"urls": ["a", "b"]}})
                    assert created.status_code == 201, created.text
                    job_id = created.json()["job"]["id"]
                    with client.stream("GET", "/api/events", params={"job": job_id}) as stream:
                        assert any(event["event"] == "end" for event in sse_events(stream))
                    job = client.get(f"/api/jobs/{job_id}").json()["job"]
                    assert job["status"] == "completed" and job["progress"]["completed"] == 2
                    logs = client.get(f"/api/jobs/{job_id}/logs", params={"format": "text"}).text
                    assert "fetched a" in logs and "fetched b" in logs
        finally:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
