"""The command line, as a user runs it: real `python -m stepstream` processes on free loopback
ports, talked to with httpx. Every wait is on a condition (a line on stderr, an event on the
stream, the process's exit), never a fixed sleep."""

from __future__ import annotations

import os
import pty
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

import stepstream
from harness.live import sse_events
from harness.processes import Served, base_of, cli_env, stepstream_cli
from stepstream import demo
from tests.redisserver import RedisServer, free_port

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

MYJOBS = '''
import threading
import time

from stepstream import Orchestrator, Step

orch = Orchestrator(max_workers=2)
blocked = threading.Event()  # never set: a child that waits on it ignores cancel


def fan_out(ctx):
    for n in range(ctx.params.get("n", 3)):
        ctx.spawn(work, n)


def work(ctx, n):
    ctx.log("info", f"item {n}")
    if ctx.params.get("fail") or n in ctx.params.get("fail_items", ()):
        raise ValueError(f"item {n} failed")
    if ctx.params.get("until_cancelled"):
        while not ctx.cancelled:
            time.sleep(0.02)
    if ctx.params.get("block"):
        blocked.wait(60)


def report_on_the_items_that_were_processed(ctx):
    ctx.log("info", "reported")


orch.define("small", [Step("fan_out", fan_out), Step("report_on_the_items_that_were_processed",
                                                     report_on_the_items_that_were_processed)])


def make():
    made = Orchestrator(max_workers=2)
    made.define("made", [Step("fan_out", fan_out)])
    return made


empty = Orchestrator(max_workers=1)
not_an_orchestrator = {"small": "nope"}


def returns_a_list():
    return []


def needs_an_argument(x):
    return orch
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A directory holding the user's own job module, `myjobs.py`."""
    (tmp_path / "myjobs.py").write_text(MYJOBS)
    return tmp_path


def run_to_end(client: httpx.Client, base: str, definition: str, params: dict | None = None) -> dict:
    """Start a job over HTTP and follow its stream to the `end` event; its final snapshot."""
    created = client.post(f"{base}/api/jobs", json={"definition": definition, "params": params or {}})
    assert created.status_code == 201, created.text
    job_id = created.json()["job"]["id"]
    with client.stream("GET", f"{base}/api/events", params={"job": job_id}, timeout=30) as stream:
        assert any(event["event"] == "end" for event in sse_events(stream))
    return client.get(f"{base}/api/jobs/{job_id}").json()


# ---------------------------------------------------------------- serve


@pytest.mark.parametrize("attribute, definition", [("orch", "small"), ("make", "made")])
def test_serve_app_serves_its_definitions_and_runs_a_job(project: Path, attribute: str, definition: str) -> None:
    with Served(f"myjobs:{attribute}", "--port", "0", cwd=project) as served:
        base = base_of(served.url())
        with httpx.Client() as client:
            names = [d["name"] for d in client.get(f"{base}/api/definitions").json()["definitions"]]
            assert names == [definition]
            final = run_to_end(client, base, definition, {"n": 4})
        assert final["job"]["status"] == "completed"
        assert final["job"]["progress"]["completed"] == 4
        code, _ = served.interrupt()
        assert code == 130
        assert "Traceback" not in served.stderr()


def test_serving_line_comes_once_listening_with_the_real_port(project: Path) -> None:
    with Served("myjobs:orch", "--port", "0", cwd=project) as served:
        url = served.url()
        port = int(re.search(r":(\d+)/", url).group(1))  # type: ignore[union-attr]
        assert port != 0
        # No retry: the line is printed only once the socket accepts connections.
        assert httpx.get(f"http://127.0.0.1:{port}/api/health").json()["status"] == "ok"


def test_port_in_use_is_a_clear_error(project: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = stepstream_cli("serve", "myjobs:orch", "--port", str(port), cwd=project)
    assert done.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in done.stderr
    assert "serving on" not in done.stderr
    assert "Traceback" not in done.stderr


def test_ctrl_c_with_an_open_stream_exits_promptly_without_errors(project: Path) -> None:
    with Served("myjobs:orch", "--port", "0", cwd=project) as served:
        base = base_of(served.url())
        with httpx.Client(timeout=10) as client, client.stream("GET", f"{base}/api/events") as stream:
            events = sse_events(stream)
            assert next(events)["event"] == "snapshot"  # the stream is open and served
            code, took = served.interrupt()
        assert code == 130
        assert took < 2, f"took {took:.2f}s to stop"
        errors = [line for line in served.stderr().splitlines() if "ERROR" in line or "Traceback" in line]
        assert errors == []


def test_ctrl_c_does_not_wait_for_job_code_that_ignores_cancel(project: Path) -> None:
    with Served("myjobs:orch", "--port", "0", cwd=project) as served:
        base = base_of(served.url())
        with httpx.Client(timeout=10) as client:
            job = client.post(f"{base}/api/jobs", json={"definition": "small", "params": {"block": True}}).json()
            with client.stream("GET", f"{base}/api/events", params={"job": job["job"]["id"]}) as stream:
                for event in sse_events(stream):  # until both workers are inside the blocked children
                    data = event["data"]
                    step = data["jobs"][0]["steps"][0] if event["event"] == "snapshot" else data
                    if event["event"] in ("snapshot", "step_progress") and step["progress"]["running"] == 2:
                        break
        code, took = served.interrupt()
    assert code == 130
    assert took < 2, f"took {took:.2f}s to stop"


def test_host_header_must_be_a_known_name(project: Path) -> None:
    with Served("myjobs:orch", "--port", "0", "--allowed-host", "jobs.example", cwd=project) as served:
        base = base_of(served.url())
        port = base.rsplit(":", 1)[1]
        assert httpx.get(f"{base}/api/health", headers={"Host": "evil.example"}).status_code == 400
        assert httpx.get(f"{base}/api/health", headers={"Host": f"localhost:{port}"}).status_code == 200
        assert httpx.get(f"{base}/api/health", headers={"Host": f"jobs.example:{port}"}).status_code == 200
        assert httpx.get(f"{base}/api/jobs").status_code == 200  # loopback: no token unless given


def test_listening_beyond_loopback_requires_the_printed_token(project: Path) -> None:
    with Served("myjobs:orch", "--host", "0.0.0.0", "--port", "0", cwd=project) as served:
        url = served.url()
        token = re.search(r"\?token=([\w-]+)", url)
        assert token, f"no token in the printed URL {url!r}"
        base = base_of(url)
        refused = httpx.get(f"{base}/api/jobs")
        assert refused.status_code in (401, 403)
        assert "error" in refused.json()
        wrong = httpx.get(f"{base}/api/jobs", headers={"Authorization": "Bearer not-the-token"})
        assert wrong.status_code in (401, 403)
        right = httpx.get(f"{base}/api/jobs", headers={"Authorization": f"Bearer {token.group(1)}"})
        assert right.status_code == 200
        assert sum("token=" in line for line in served.lines) == 1  # printed once


@pytest.mark.parametrize("how", ["--token", "STEPSTREAM_TOKEN"])
def test_a_given_token_is_used_and_not_printed(project: Path, how: str) -> None:
    args = ["--token", "s3cret-token"] if how == "--token" else []
    env = {"STEPSTREAM_TOKEN": "s3cret-token"} if how == "STEPSTREAM_TOKEN" else {}
    with Served("myjobs:orch", "--host", "0.0.0.0", "--port", "0", *args, cwd=project, **env) as served:
        base = base_of(served.url())
        assert httpx.get(f"{base}/api/jobs").status_code in (401, 403)
        assert httpx.get(f"{base}/api/jobs", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        assert "s3cret-token" not in served.stderr()


def test_demo_adds_its_definitions_to_the_app(project: Path) -> None:
    with Served("myjobs:orch", "--demo", "--size", "5", "--port", "0", cwd=project) as served:
        base = base_of(served.url())
        names = {d["name"] for d in httpx.get(f"{base}/api/definitions").json()["definitions"]}
        assert names == {"small", *demo.DEFINITIONS}


def test_demo_refuses_to_redefine_the_apps_definitions(project: Path) -> None:
    (project / "clash.py").write_text("from stepstream import Orchestrator, Step\norch = Orchestrator()\n"
                                      "orch.define('web_crawl', [Step('one', lambda ctx: None)])\n")
    done = stepstream_cli("serve", "clash:orch", "--demo", "--port", "0", cwd=project)
    assert done.returncode == 2
    assert done.stderr.strip() == "stepstream: error: --demo would redefine web_crawl, already defined by clash:orch"


def test_an_app_without_definitions_is_served_with_a_warning(project: Path) -> None:
    with Served("myjobs:empty", "--port", "0", cwd=project) as served:
        base = base_of(served.url())
        assert httpx.get(f"{base}/api/definitions").json()["definitions"] == []
        assert "warning: myjobs:empty defines no job definitions" in served.stderr()


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("app, message", [
    ("myjobs", "APP must be module:attribute (e.g. myjobs:orch), not 'myjobs'"),
    ("myjobs:", "APP must be module:attribute (e.g. myjobs:orch), not 'myjobs:'"),
    ("nosuchmodule:orch", "cannot import 'nosuchmodule': no module named 'nosuchmodule'"),
    ("broken:orch", "cannot import 'broken': '(' was never closed ("),
    ("raises:orch", "cannot import 'raises': RuntimeError: no database configured ("),
    ("needsdep:orch", "cannot import 'needsdep': ModuleNotFoundError: No module named 'nosuchdependency'"),
    ("myjobs:orhc", "'myjobs' ("),
    ("myjobs:not_an_orchestrator", "myjobs:not_an_orchestrator is a dict, not an Orchestrator"),
    ("myjobs:returns_a_list", "myjobs:returns_a_list() returned a list, not an Orchestrator"),
    ("myjobs:needs_an_argument", "calling myjobs:needs_an_argument() failed: TypeError: "),
])
def test_an_app_that_is_not_an_orchestrator_is_a_one_line_error(project: Path, app: str, message: str) -> None:
    (project / "broken.py").write_text("orch = (\n")
    (project / "raises.py").write_text("import os\nraise RuntimeError('no database configured')\n")
    (project / "needsdep.py").write_text("import nosuchdependency\n")
    done = stepstream_cli("run", app, "small", cwd=project)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"stepstream: error: {message}")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("app, message", [
    ("myjobs", "APP must be module:attribute (e.g. myjobs:orch), not 'myjobs'"),
    ("myjobs:not_an_orchestrator",
     "myjobs:not_an_orchestrator is a dict, not an Orchestrator (or a callable returning one)"),
])
def test_serve_refuses_a_bad_app_in_one_line(project: Path, app: str, message: str) -> None:
    done = stepstream_cli("serve", app, "--port", "0", cwd=project)
    assert (done.returncode, done.stderr) == (2, f"stepstream: error: {message}\n")


def test_a_missing_attribute_names_the_orchestrators_there_are(project: Path) -> None:
    done = stepstream_cli("run", "myjobs:orhc", "small", cwd=project)
    assert done.stderr.rstrip().endswith("has no attribute 'orhc'; Orchestrators in it: orch, empty")


@pytest.mark.parametrize("args, message", [
    (["serve", "--port", "70000"], "argument --port: must be a port number 0..65535"),
    (["serve", "--port", "http"], "argument --port: must be a port number 0..65535"),
    (["serve", "--port", "-1"], "argument --port: must be a port number 0..65535"),
    (["serve", "--workers", "-1"], "argument --workers: must be a whole number 0 or more, not '-1'"),
    (["worker", "myjobs:orch", "--workers", "0"], "argument --workers: must be a whole number 1 or more, not '0'"),
    (["serve", "--redis", "notaurl"], "argument --redis: must be a Redis URL such as redis://HOST:6379/0, "
                                      "not 'notaurl'"),
    (["worker", "myjobs:orch", "--redis", "notaurl"], "argument --redis: must be a Redis URL such as "
                                                      "redis://HOST:6379/0, not 'notaurl'"),
    (["serve", "--redis", "redis://localhost:6379/0", "--memory"], "argument --memory: not allowed with argument "
                                                                    "--redis"),
    (["serve", "--token", ""], "argument --token: must not be empty"),
    (["run", "myjobs:orch", "small", "--params", "[1, 2]"], "argument --params: must be a JSON object"),
    (["run", "myjobs:orch", "small", "--params", "{size: 1}"], "argument --params: must be a JSON object"),
    (["run", "myjobs:orch", "small", "--params", '{"n": NaN}'], "argument --params: must be a JSON object"),
    (["run", "--demo", "--speed", "-1"], "argument --speed: must be a number 0 or more, not '-1'"),
    (["run", "--demo", "--size", "x"], "argument --size: must be a whole number 1 or more, not 'x'"),
])
def test_bad_arguments_are_refused_in_plain_words(project: Path, args: list[str], message: str) -> None:
    done = stepstream_cli(*args, cwd=project)
    assert done.returncode == 2
    assert message in done.stderr
    assert not re.search(r"invalid \w+ value", done.stderr)  # argparse naming a function of ours
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("args, message", [
    (["run", "myjobs:orch", "nope"], "no definition named 'nope'; known: small"),
    (["run", "myjobs:orch"], "give the DEFINITION to run; myjobs:orch defines: small"),
    (["run", "nearby_restaurants"], "to run the demo: stepstream run --demo nearby_restaurants"),
    (["run", "myjobs:orch", "small", "--size", "3"], "--size applies only with --demo"),
    (["serve", "myjobs:orch", "--workers", "3"], "--workers applies only without APP"),
    (["serve", "--workers", "0"], "--workers 0 (run no work here) applies only with --redis"),
    (["serve", "myjobs:orch", "--workers", "0", "--memory"], "--workers 0 (run no work here) applies only with "
                                                              "--redis"),
    (["worker", "myjobs:orch"], "a worker needs the deployment's Redis: --redis URL (or $STEPSTREAM_REDIS)"),
    (["worker", "myjobs:empty", "--redis", "redis://127.0.0.1:6379/0"],
     "myjobs:empty defines no job definitions: this worker would have nothing to run"),
])
def test_commands_that_cannot_work_say_why(project: Path, args: list[str], message: str) -> None:
    done = stepstream_cli(*args, cwd=project, STEPSTREAM_REDIS="")  # no deployment's Redis from outside
    assert done.returncode == 2
    assert message in done.stderr
    assert done.stderr.count("\n") == 1


# ---------------------------------------------------------------- Redis: serve --redis, worker


@pytest.mark.parametrize("command", [
    ["worker", "myjobs:orch", "--redis", "{url}"],
    ["serve", "myjobs:orch", "--redis", "{url}", "--port", "0"],
    ["serve", "--redis", "{url}", "--workers", "0", "--port", "0"],
    ["worker", "myjobs:orch"],  # the URL from $STEPSTREAM_REDIS
    ["serve", "myjobs:orch", "--port", "0"],
])
def test_a_redis_where_nothing_listens_is_a_quick_one_line_error(project: Path, command: list[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    sent = time.monotonic()
    done = stepstream_cli(*(a.replace("{url}", url) for a in command), cwd=project, STEPSTREAM_REDIS=url,
                          timeout=30)
    took = time.monotonic() - sent
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"stepstream: error: cannot reach Redis at {url}: "), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "serving on" not in done.stderr and "Traceback" not in done.stderr
    assert took < 10, f"took {took:.1f}s to give up"


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_worker_runs_until_a_signal_and_exits_128_plus_it(project: Path, sig: int, status: int) -> None:
    with RedisServer() as redis_server, \
            Served("myjobs:orch", "--redis", redis_server.url, cwd=project, command="worker") as worker:
        worker.wait_for(f"jobs in Redis at {redis_server.url} (run here by 2 worker threads)")
        worker.wait_for("worker running small (Ctrl+C to stop)")
        assert worker.proc.poll() is None
        sent = time.monotonic()
        worker.proc.send_signal(sig)
        assert worker.proc.wait(30) == status
        assert time.monotonic() - sent < 10
        assert worker.stderr().rstrip().endswith("stepstream: worker stopped")
        assert "Traceback" not in worker.stderr()


def test_version(project: Path) -> None:
    done = stepstream_cli("--version", cwd=project)
    assert done.returncode == 0
    assert done.stdout == f"stepstream {stepstream.__version__}\n"


# ---------------------------------------------------------------- run


def step_lines(output: str, names: list[str]) -> list[str]:
    return [line for line in output.splitlines() if line.split(" ", 1)[0] in names]


def test_run_shows_each_step_and_exits_0_when_the_job_completed(project: Path) -> None:
    done = stepstream_cli("run", "myjobs:orch", "small", "--params", '{"n": 5}', cwd=project)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    assert lines[-1].startswith("job completed in ")
    assert "5 children, 5 completed, 0 failed, 0 cancelled" in lines[-1]
    final = step_lines(done.stdout, ["fan_out"])[-1].split()
    assert final[:4] == ["fan_out", "completed", "#" * len(final[2]), "5/5"]  # bar, completed of total
    assert step_lines(done.stdout, ["report_on_the_items_th~"])  # a long name is cut to fit


def test_run_exits_1_and_shows_the_error_when_the_job_failed(project: Path) -> None:
    done = stepstream_cli("run", "myjobs:orch", "small", "--params", '{"fail": true}', cwd=project)
    assert done.returncode == 1
    assert "job failed in " in done.stdout
    assert "error: step 'fan_out' failed: all 3 children failed" in done.stdout
    assert all(len(line) <= 80 for line in done.stdout.splitlines())


def test_run_explains_failed_children_and_exits_3_when_the_job_completed_with_some(project: Path) -> None:
    done = stepstream_cli("run", "myjobs:orch", "small", "--params", '{"n": 6, "fail_items": [1, 4]}', cwd=project)
    assert done.returncode == 3, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    assert lines[-4].startswith("job completed with 2 failed in ")
    assert lines[-3] == "  6 children, 4 completed, 2 failed, 0 cancelled"
    assert lines[-2:] == ["failed children, by error:", "    2 × fan_out: ValueError: item … failed"]


def test_run_of_a_failed_job_ends_with_the_cause_of_its_childrens_failures(project: Path) -> None:
    done = stepstream_cli("run", "myjobs:orch", "small", "--params", '{"fail": true}', cwd=project)
    assert done.returncode == 1
    assert done.stdout.splitlines()[-2:] == ["failed children, by error:", "    3 × fan_out: ValueError: item … failed"]


def test_run_demo(project: Path) -> None:
    done = stepstream_cli("run", "--demo", "web_crawl", "--size", "10", "--speed", "0",
                          "--params", '{"fail_rate": 0}', cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [line.split()[:2] for line in step_lines(done.stdout, ["crawl", "index"])][-2:] == [
        ["crawl", "completed"], ["index", "completed"]]


def test_run_on_a_terminal_redraws_the_steps_in_place(project: Path) -> None:
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "stepstream", "run", "myjobs:orch", "small",
                             "--params", '{"n": 6, "until_cancelled": true}'],
                            cwd=project, env=cli_env(), stdout=follower, stderr=subprocess.PIPE)
    os.close(follower)
    output = b""
    try:
        while output.count(b"\x1b[3F") < 2:  # redrawn twice: cancel it
            output += os.read(leader, 4096)
        proc.send_signal(signal.SIGINT)
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(leader)
        assert proc.wait(30) == 1
    text = output.decode()
    visible = [ANSI.sub("", line) for line in text.replace("\r", "").split("\n")]
    assert all(len(line) <= 80 for line in visible), visible
    assert "job cancelled in " in text
    # One table, also after Ctrl+C: every redraw after the first moves up over the last one.
    blocks = text.count("step ")
    assert blocks > 2 and len(re.findall(r"\x1b\[\d+F", text)) == blocks - 1, text
    assert "stepstream: cancelled by Ctrl+C" in text  # the block's note line, not a second table


def run_on_a_terminal(project: Path, columns: int, *args: str) -> tuple[int, list[str]]:
    """`stepstream run` on a pty of `columns`: its exit status and the screen's final lines."""
    import fcntl
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "stepstream", "run", *args], cwd=project, env=cli_env(),
                            stdout=follower, stderr=subprocess.PIPE)
    os.close(follower)
    output = b""
    try:
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(leader)
    return proc.wait(30), [ANSI.sub("", line) for line in output.decode().replace("\r", "").split("\n")]


@pytest.mark.parametrize("columns", [60, 80])
def test_run_fits_its_bars_counts_rate_and_time_in_60_to_80_columns(project: Path, columns: int) -> None:
    status, lines = run_on_a_terminal(project, columns, "myjobs:orch", "small", "--params",
                                      '{"n": 1234, "fail_items": [3]}')
    assert status == 3
    assert all(len(line) <= columns for line in lines), [line for line in lines if len(line) > columns]
    header = next(line for line in lines if line.startswith("step "))
    assert header.split() == ["step", "status", "progress", "done/total", "failed", "rate", "time"]
    final = [line for line in lines if line.startswith("fan_out ")][-1].split()
    assert final[1] == "completed" and final[3] == "1233/1234" and final[4] == "1"  # numbers whole
    assert "    1 × fan_out: ValueError: item … failed" in lines


def test_ctrl_c_cancels_the_job_once_and_a_second_one_quits(project: Path) -> None:
    cancelled = subprocess.Popen([sys.executable, "-m", "stepstream", "run", "myjobs:orch", "small",
                                  "--params", '{"until_cancelled": true}'],
                                 cwd=project, env=cli_env(), stdout=subprocess.PIPE, text=True)
    assert cancelled.stdout is not None
    for line in cancelled.stdout:
        if line.startswith("fan_out ") and line.split()[1] == "running":
            cancelled.send_signal(signal.SIGINT)
            break
    rest = cancelled.stdout.read()
    assert cancelled.wait(30) == 1
    assert "stepstream: cancelling (Ctrl+C again to quit)" in rest
    assert "job cancelled in " in rest

    stuck = subprocess.Popen([sys.executable, "-m", "stepstream", "run", "myjobs:orch", "small",
                              "--params", '{"block": true}'],
                             cwd=project, env=cli_env(), stdout=subprocess.PIPE, text=True)
    interrupted = False
    assert stuck.stdout is not None
    for line in stuck.stdout:
        cells = line.split()
        if cells[:2] == ["fan_out", "running"] and cells[3].endswith("/3") and not interrupted:  # spawned
            stuck.send_signal(signal.SIGINT)
            interrupted = True
        if line.startswith("stepstream: cancelling"):  # the job cannot end: its children ignore cancel
            stuck.send_signal(signal.SIGINT)
            break
    sent = time.monotonic()
    assert stuck.wait(30) == 130
    assert time.monotonic() - sent < 2
    assert "quit without waiting for the job" in stuck.stdout.read()


def test_the_current_directory_is_importable(project: Path) -> None:
    package = project / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "jobs.py").write_text(textwrap.dedent("""
        from stepstream import Orchestrator, Step
        orch = Orchestrator(max_workers=1)
        orch.define("one", [Step("only", lambda ctx: ctx.log("info", "hi"))])
    """))
    done = stepstream_cli("run", "pkg.jobs:orch", "one", cwd=project)
    assert done.returncode == 0, done.stderr
    assert "job completed in " in done.stdout


def test_the_command_line_runs_the_collector_less_often_and_leaves_its_set_up_out():
    # Whatever the command (this one fails at once: no Redis), the process's collector is tuned
    # before any work runs (stepstream/gctuning.py); the library alone leaves it as it was.
    code = (
        "import gc, sys\n"
        "import stepstream\n"
        "untouched = (gc.get_threshold()[0], gc.get_freeze_count())\n"
        "from stepstream import cli\n"
        "status = cli.main(['worker', 'nowhere:app'])\n"
        "print(untouched, status, gc.get_threshold()[0], gc.get_freeze_count() > 0)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "STEPSTREAM_REDIS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.stdout.split(None, 2)[-1].strip() == "2 10000 True", out.stdout + out.stderr
    assert out.stdout.startswith("(700, 0)"), out.stdout
