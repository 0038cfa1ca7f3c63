"""The Celery runner against real processes: a real redis-server (state and broker), real
`celery -A capp:celery_app worker` processes and a real `stepstream serve --celery` server.

What a user sees: a job fans out over Celery and its counts and logs stream live; a Celery worker
killed with SIGKILL mid-child -> the child runs again as a new attempt, counted once; a cancel
reaches pending and running children; the same task message sent twice changes nothing.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from harness.live import sse_events
from harness.processes import Served, StderrLines, base_of, cli_env, until
from stepstream import Orchestrator
from tests.redisserver import RedisServer, require_redis_server
from tests.test_redis import all_logs, check_exact, folded, start

pytest.importorskip("celery", reason="the Celery runner's tests need the extra stepstream[celery]")

pytestmark = pytest.mark.timeout(150)

VISIBILITY = 3.0  # seconds: the lease after which work of a vanished worker runs again

APP = textwrap.dedent('''
    import logging
    import os
    import time

    from celery import Celery

    from stepstream import Orchestrator, Step

    REDIS = os.environ["STEPSTREAM_REDIS"]
    celery_app = Celery("capp", broker=os.environ.get("STEPSTREAM_BROKER") or REDIS.rsplit("/", 1)[0] + "/1")
    orch = Orchestrator()
    orch.use_celery(celery_app, redis=REDIS, visibility_timeout=float(os.environ["STEPSTREAM_VISIBILITY"]))
    log = logging.getLogger("capp")


    @celery_app.task
    def fetch(url):
        log.info("fetched %s in %s", url, os.getpid())


    def work(ctx, n, pause):
        ctx.log("info", f"child {n} working in {os.getpid()}")
        deadline = time.monotonic() + pause
        while time.monotonic() < deadline:
            if ctx.cancelled:
                ctx.log("warning", f"child {n} saw cancel in {os.getpid()}")
                return
            time.sleep(0.01)
        log.info("child %s done", n)


    def fan(ctx):
        p = ctx.params
        for n in range(p.get("children", 10)):
            ctx.spawn(work, n, p.get("pause", 0.0))
        for url in p.get("urls", []):
            ctx.spawn(fetch, url)
        ctx.log("info", "fanned out")


    def report(ctx):
        ctx.log("info", "report ran")


    orch.define("fan", [Step("fan", fan), Step("report", report)])
''')


class CeleryWorker(StderrLines):
    """`celery -A capp:celery_app worker` in a process group of its own, stderr read line by line.

    `loglevel="WARNING"`: its stderr is a pipe read only once it is killed (as a supervisor that
    collects the output afterwards would): a worker that writes a line per task blocks when the
    pipe is full. It writes no "ready." line then: work sent before it is ready waits in the queue.
    """

    def __init__(self, cwd: Path, redis_url: str, name: str, concurrency: int = 2, loglevel: str = "INFO",
                 broker: str = "") -> None:
        env = cli_env(STEPSTREAM_REDIS=redis_url, STEPSTREAM_VISIBILITY=str(VISIBILITY), STEPSTREAM_BROKER=broker)
        env["PYTHONPATH"] = os.pathsep.join([str(cwd), env["PYTHONPATH"]])
        super().__init__(subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "capp:celery_app", "worker", "-c", str(concurrency),
             "-n", f"{name}@%h", f"--loglevel={loglevel}", "--without-gossip", "--without-mingle",
             "--without-heartbeat"],
            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True))
        if loglevel == "INFO":
            self.start_reading()
            self.wait_for(" ready.", 60)

    def owns(self, pid: int) -> bool:
        try:
            return os.getpgid(pid) == self.proc.pid
        except ProcessLookupError:
            return False

    def kill(self) -> None:
        """SIGKILL to the whole worker: its main process and its pool processes."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        if not self._pump.is_alive() and self.proc.stderr is not None and not self.proc.stderr.closed:
            self.lines.extend(self.proc.stderr.readlines())  # read later: what it wrote until now
            self.proc.stderr.close()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer(require_redis_server(), durable=False) as server:
        yield server


class Deployment:
    def __init__(self, redis_url: str, cwd: Path) -> None:
        self.redis_url = redis_url
        self.broker = ""  # Celery's broker: database 1 of the state's redis-server, unless set
        self.cwd = cwd
        self.servers: list[Served] = []
        self.workers: list[CeleryWorker] = []

    def server(self) -> str:
        served = Served("capp:orch", "--redis", self.redis_url, "--port", "0", "--celery", "capp:celery_app",
                        "--visibility-timeout", str(VISIBILITY), cwd=self.cwd,
                        STEPSTREAM_REDIS=self.redis_url, STEPSTREAM_VISIBILITY=str(VISIBILITY),
                        STEPSTREAM_BROKER=self.broker)
        self.servers.append(served)
        return base_of(served.url())

    def worker(self, name: str, concurrency: int = 2, loglevel: str = "INFO") -> CeleryWorker:
        worker = CeleryWorker(self.cwd, self.redis_url, name, concurrency, loglevel, self.broker)
        self.workers.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        for served in self.servers:
            served.__exit__()


@pytest.fixture
def deployment(redis_server: RedisServer, tmp_path: Path) -> Iterator[Deployment]:
    (tmp_path / "capp.py").write_text(APP)
    d = Deployment(redis_server.url, tmp_path)
    yield d
    d.close()


@pytest.fixture
def reader(redis_server: RedisServer) -> Iterator[Orchestrator]:
    orch = Orchestrator(redis=redis_server.url, max_workers=0)
    yield orch
    orch.shutdown(wait=False)


def lines(reader: Orchestrator, job_id: str, text: str) -> list[dict]:
    return [r for r in all_logs(reader.logs, job_id) if text in r["message"]]


def test_a_job_fans_out_over_celery_workers_and_its_counts_and_logs_stream_live(deployment, reader):
    base = deployment.server()
    job_id = start(base, {"children": 30, "pause": 0.02, "urls": ["u1", "u2", "u3"]})
    events: list[dict] = []
    # the stream is open before any worker is: what it shows next happens live, however fast the workers are
    url = f"{base}/api/events?job={job_id}&children=1"
    with httpx.stream("GET", url, timeout=httpx.Timeout(30, read=30)) as response:
        stream = sse_events(response)
        events.append(next(stream))
        assert events[0]["event"] == "snapshot"
        deployment.worker("a")
        deployment.worker("b")
        for event in stream:
            events.append(event)
            if event["event"] == "end":
                break
    assert events[-1]["event"] == "end" and events[-1]["data"]["status"] == "completed"
    progress = [e for e in events if e["event"] == "step_progress"]
    assert len(progress) > 2  # the counts moved live, not only at the end
    final = httpx.get(f"{base}/api/jobs/{job_id}").json()["job"]
    assert folded(events) == final
    job = check_exact(reader, job_id, 33)
    assert job["progress"]["completed"] == 33
    assert len(lines(reader, job_id, "report ran")) == 1
    fetched = lines(reader, job_id, "fetched ")
    assert sorted(r["message"].split()[1] for r in fetched) == ["u1", "u2", "u3"]  # a Celery task as a child
    assert all(r["step_name"] == "fan" and r["level"] == "info" for r in fetched)
    assert len(lines(reader, job_id, "done")) == 30  # `logging` lines of children land in their step
    streamed = {e["data"]["message"] for e in events if e["event"] == "log"}
    assert {r["message"] for r in fetched} <= streamed


def test_hundreds_of_quick_children_on_quiet_workers_complete_exactly_and_the_workers_stay_quiet(deployment, reader):
    """Two workers started with `--loglevel=WARNING`, their output read only at the end: 600
    quick children complete, counted exactly, each child's `logging.info` in its step, and the
    workers wrote no line per task. (The log bridge used to lower the root logger to INFO, so
    Celery's handler wrote two lines a task despite WARNING; at about 250 tasks a worker's 64 KiB
    pipe was full and its processes blocked in write(2): the job never ended.)"""
    base = deployment.server()
    a = deployment.worker("a", loglevel="WARNING")
    b = deployment.worker("b", loglevel="WARNING")
    job_id = start(base, {"children": 600, "pause": 0.0})
    try:
        done = reader.wait(job_id, timeout=60)["job"]
    except TimeoutError:
        done = reader.snapshot(job_id)["job"]
    a.kill()
    b.kill()
    per_task = [line for line in a.lines + b.lines if "stepstream.run[" in line]
    assert not per_task, f"{len(per_task)} lines, e.g. {per_task[:2]}; the job: {done['progress']}"
    assert done["status"] == "completed", done["progress"]
    job = check_exact(reader, job_id, 600)
    assert job["progress"]["completed"] == 600
    assert len(lines(reader, job_id, " done")) == 600  # the bridge still captures at WARNING


def test_work_waiting_in_celerys_queue_longer_than_the_visibility_timeout_is_sent_once(deployment, reader):
    """300 children of 20 ms on one pool process: the last wait ~10 s in Celery's queue, over three
    visibility timeouts. Their entries are held by a live dispatcher, so the sweep leaves them:
    each is sent once (it used to be sent again every timeout it waited, duplicates that the claim
    turned away: their number grows with the square of the queue)."""
    base = deployment.server()
    worker = deployment.worker("a", concurrency=1)
    job_id = start(base, {"children": 300, "pause": 0.02})
    done = reader.wait(job_id, timeout=90)["job"]
    assert done["status"] == "completed", done["progress"]
    job = check_exact(reader, job_id, 300)
    assert job["progress"]["completed"] == 300
    time.sleep(1.0)  # the worker's last lines
    outcomes = [line.rsplit(": ", 1)[-1].strip() for line in worker.lines if "succeeded in" in line]
    assert outcomes.count("'ran'") == 302 and len(outcomes) == 302, collections.Counter(outcomes)


def test_work_of_a_dispatcher_that_died_before_sending_is_sent_again(deployment, reader, redis_server):
    """An entry read by a dispatcher that died before its message reached the broker: no live
    dispatcher holds it, so after the visibility timeout a sweep sends it again."""
    base = deployment.server()
    job_id = start(base, {"children": 3, "pause": 0.0})
    client = redis_server.client()
    pending = until(lambda: client.xpending_range("stepstream:work", "workers", "-", "+", 10), what="sent")
    ids = [p["message_id"] for p in pending]
    client.xclaim("stepstream:work", "workers", "stepstream-dispatch:ghost", 0, ids, justid=True)
    broker = type(client).from_url(redis_server.url.rsplit("/", 1)[0] + "/1")
    until(lambda: broker.llen("celery") == len(ids), what="the message in Celery's queue")
    broker.delete("celery")  # as if it never arrived
    started = time.monotonic()
    deployment.worker("a")
    done = reader.wait(job_id, timeout=60)["job"]
    assert done["status"] == "completed", done["progress"]
    assert check_exact(reader, job_id, 3)["progress"]["completed"] == 3
    assert time.monotonic() - started > VISIBILITY - 1  # sent again by a sweep, not at once


def test_a_celery_worker_killed_mid_child_its_children_run_again_counted_once(deployment, reader):
    base = deployment.server()
    a = deployment.worker("a")
    deployment.worker("b")
    job_id = start(base, {"children": 6, "pause": 2.0})

    def running_on_a() -> list[dict]:
        return [r for r in lines(reader, job_id, "working in") if a.owns(int(r["message"].rsplit(" ", 1)[1]))]

    victims = until(running_on_a, what="a child running on worker a")
    a.kill()
    done = reader.wait(job_id, timeout=90)["job"]
    assert done["status"] == "completed"
    job = check_exact(reader, job_id, 6)
    assert job["progress"]["completed"] == 6
    children = {c["id"]: c for c in reader.children(job_id)["children"]}
    killed = {r["job_id"] for r in victims}
    for child_id in killed:
        assert children[child_id]["attempt"] == 2, children[child_id]
    assert len(lines(reader, job_id, " done")) == 6  # each child finished once
    lost = lines(reader, job_id, "its worker stopped or vanished")
    assert {r["job_id"] for r in lost} >= killed
    assert all(c["attempt"] == 1 for i, c in children.items() if i not in {r["job_id"] for r in lost})


def test_cancel_reaches_pending_and_running_children_on_celery_workers(deployment, reader):
    base = deployment.server()
    deployment.worker("a", concurrency=2)
    job_id = start(base, {"children": 12, "pause": 20.0})
    until(lambda: len(lines(reader, job_id, "working in")) >= 2, what="two children running")
    response = httpx.post(f"{base}/api/jobs/{job_id}/cancel", timeout=30)
    assert response.status_code in (200, 202), response.text
    done = reader.wait(job_id, timeout=60)["job"]
    assert done["status"] == "cancelled"
    job = check_exact(reader, job_id, 12)
    assert job["progress"]["cancelled"] + job["progress"]["completed"] == 12
    worked = {r["job_id"] for r in lines(reader, job_id, "working in")}
    saw = {r["job_id"] for r in lines(reader, job_id, "saw cancel")}
    assert saw and saw == worked  # every child that ran saw the cancel and returned
    assert len(worked) < 12  # the others were acknowledged without running


def test_the_same_task_sent_twice_changes_nothing(deployment, reader, redis_server):
    base = deployment.server()
    worker = deployment.worker("a")
    job_id = start(base, {"children": 1, "pause": 2.0})
    until(lambda: lines(reader, job_id, "working in"), what="the child running")
    client = redis_server.client()
    pending = client.xpending_range("stepstream:work", "workers", "-", "+", 10)
    running = [p for p in pending if not p["consumer"].startswith(b"stepstream-dispatch:")]
    assert len(running) == 1, pending
    entry_id = running[0]["message_id"].decode()
    from celery import Celery

    sender = Celery("sender", broker=redis_server.url.rsplit("/", 1)[0] + "/1")
    for _ in range(2):  # a duplicate delivery while the child runs
        sender.send_task("stepstream.run", (entry_id, "child", "x", "1"))
    worker.wait_for("'skipped'")
    worker.wait_for("'skipped'")
    done = reader.wait(job_id, timeout=60)["job"]
    seq = reader.snapshot(job_id)["seq"]
    sender.send_task("stepstream.run", (entry_id, "child", "x", "1"))  # and a late one, after it ended
    worker.wait_for("'skipped'")
    sender.send_task("stepstream.run", ("not an entry", None, None, None))  # and a hostile one
    worker.wait_for("'invalid'")  # (one after the other: two pool processes may answer in any order)
    assert done["status"] == "completed"
    job = check_exact(reader, job_id, 1)
    assert job["progress"]["completed"] == 1
    assert reader.children(job_id)["children"][0]["attempt"] == 1
    assert len(lines(reader, job_id, "working in")) == 1
    assert reader.snapshot(job_id)["seq"] == seq


WITHOUT_CELERY = ("import sys\nsys.modules['celery'] = None  # `import celery` raises ModuleNotFoundError\n"
                  "from stepstream.cli import main\nsys.exit(main(sys.argv[1:]))\n")
MISSING = "stepstream: error: the Celery runner needs Celery: pip install 'stepstream[celery]'\n"


@pytest.mark.parametrize("args", [
    ["serve", "--redis", "redis://127.0.0.1:1/0", "--celery", "capp:celery_app"],
    ["worker", "plain:orch", "--redis", "redis://127.0.0.1:1/0", "--celery", "capp:celery_app"],
])
def test_choosing_celery_without_celery_is_one_line_naming_the_extra_and_status_2(args, tmp_path):
    (tmp_path / "plain.py").write_text("from stepstream import Orchestrator\norch = Orchestrator()\n")
    done = subprocess.run([sys.executable, "-c", WITHOUT_CELERY, *args], cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (2, MISSING)


def test_stepstream_worker_with_celery_runs_a_celery_worker_that_stops_on_sigterm(deployment, reader, redis_server):
    """`stepstream worker APP --redis URL --celery MODULE:APP`: a Celery worker of that app, as
    `celery -A MODULE:APP worker` would be, which runs the job; SIGTERM: Celery's warm shutdown."""
    base = deployment.server()
    with Served("capp:orch", "--redis", redis_server.url, "--celery", "capp:celery_app", "--workers", "2",
                "--visibility-timeout", str(VISIBILITY), cwd=deployment.cwd, command="worker",
                STEPSTREAM_REDIS=redis_server.url, STEPSTREAM_VISIBILITY=str(VISIBILITY)) as worker:
        worker.wait_for(" ready.", 60)
        job_id = start(base, {"children": 8, "pause": 0.0, "urls": ["u1"]})
        done = reader.wait(job_id, timeout=60)["job"]
        assert done["status"] == "completed", done["progress"]
        assert check_exact(reader, job_id, 9)["progress"]["completed"] == 9
        assert {int(r["message"].rsplit(" ", 1)[1]) for r in lines(reader, job_id, "working in")} <= {
            p.pid for p in psutil.Process(worker.proc.pid).children()}  # its own pool processes ran them
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.proc.wait(30) == 0


def test_work_sent_while_the_broker_is_down_is_sent_once_it_is_back(deployment, reader):
    """Celery's broker (a redis-server of its own) killed: a job started meanwhile is kept in
    stepstream's state, the server says it cannot send its work, and once the broker is back the
    work is sent and runs: the job completes, each child once."""
    from stepstream.backends.redis.celeryrunner import LOST_AFTER
    with RedisServer(durable=False) as broker:
        deployment.broker = broker.url
        base = deployment.server()
        deployment.worker("a")
        broker.stop(kill=True)
        job_id = start(base, {"children": 5, "pause": 0.0})
        # a dispatcher (the server's, or one of the worker's pool processes') says why the work waits
        said = [*deployment.servers, *deployment.workers]
        until(lambda: any("sending work to Celery failed" in p.stderr() for p in said), timeout=60,
              what="a dispatcher saying it cannot send")
        assert reader.snapshot(job_id)["job"]["status"] in ("pending", "running")
        broker.restart()
        # sent as soon as the broker is back: not by the sweep that resends a live dispatcher's
        # entries only after LOST_AFTER visibility timeouts (30 s here)
        done = reader.wait(job_id, timeout=(LOST_AFTER - 3) * VISIBILITY)["job"]
        assert done["status"] == "completed", done["progress"]
        assert check_exact(reader, job_id, 5)["progress"]["completed"] == 5
        assert len(lines(reader, job_id, " done")) == 5
