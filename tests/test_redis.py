"""A deployment on a real redis-server: servers and workers in separate processes, one exact view.

Each test starts its own `redis-server` (AOF on) on a free port in a temp dir, and the processes
a user would run (`stepstream serve APP --redis URL`, `stepstream worker APP --redis URL`). The
test process reads through an `Orchestrator` on the same Redis that runs no work itself.
"""

from __future__ import annotations

import json
import signal
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from harness.folding import check_progress, fold
from harness.live import sse_events
from harness.processes import Served, base_of, until
from stepstream import Orchestrator, Step
from stepstream.model import InvalidParams, NotFound
from tests.redisserver import RedisServer, require_redis_server

pytestmark = pytest.mark.timeout(120)

APP = textwrap.dedent('''
    import os
    import time

    from stepstream import Orchestrator, Step

    orch = Orchestrator(max_workers=3)


    def work(ctx, n, pause):
        ctx.log("info", f"child {n} working in {os.getpid()}")
        deadline = time.monotonic() + pause
        while time.monotonic() < deadline:
            if ctx.cancelled:
                ctx.log("warning", f"child {n} saw cancel in {os.getpid()}")
                return
            time.sleep(0.01)
        ctx.log("info", f"child {n} done")


    def fan(ctx):
        p = ctx.params
        for n in range(p.get("children", 10)):
            ctx.spawn(work, n, p.get("pause", 0.0), retries=p.get("retries", 0))
        ctx.log("info", "fanned out")


    def report(ctx):
        ctx.log("info", "report ran")


    orch.define("fan", [Step("fan", fan), Step("report", report)])
''')


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer(require_redis_server()) as server:
        yield server


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "rapp.py").write_text(APP)
    return tmp_path


@pytest.fixture
def reader(redis_server: RedisServer) -> Iterator[Orchestrator]:
    """An orchestrator of the test process on the deployment's Redis, running no work."""
    orch = Orchestrator(redis=redis_server.url, max_workers=0)
    yield orch
    orch.shutdown(wait=False)


class Deployment:
    """The processes of one deployment, all killed at the end."""

    def __init__(self, redis_url: str, cwd: Path) -> None:
        self.redis_url = redis_url
        self.cwd = cwd
        self.processes: list[Served] = []

    def server(self, *extra: str) -> str:
        served = Served("rapp:orch", "--redis", self.redis_url, "--port", "0", "--workers", "0", *extra,
                        cwd=self.cwd)
        self.processes.append(served)
        return base_of(served.url())

    def worker(self, *extra: str) -> Served:
        worker = Served("rapp:orch", "--redis", self.redis_url, *extra, cwd=self.cwd, command="worker")
        self.processes.append(worker)
        worker.wait_for("worker running")
        return worker

    def close(self) -> None:
        for process in self.processes:
            process.__exit__()


@pytest.fixture
def deployment(redis_server: RedisServer, app_dir: Path) -> Iterator[Deployment]:
    d = Deployment(redis_server.url, app_dir)
    yield d
    d.close()


def start(base: str, params: dict) -> str:
    response = httpx.post(f"{base}/api/jobs", json={"definition": "fan", "params": params}, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["job"]["id"]


def all_logs(read: Callable[..., dict], job_id: str) -> list[dict]:
    records, after = [], 0
    while True:
        page = read(job_id, after=after, limit=1000)
        records += page["logs"]
        if page["next"] is None:
            return records
        after = page["next"]


def all_children(reader: Orchestrator, job_id: str) -> list[dict]:
    children, cursor = [], 0
    while cursor is not None:
        page = reader.children(job_id, cursor=cursor, limit=500)
        children += page["children"]
        cursor = page["next"]
    return children


def check_exact(reader: Orchestrator, job_id: str, children: int) -> dict:
    """The final job: counts add up, match the children one by one, and the logs their counts."""
    job = reader.snapshot(job_id)["job"]
    check_progress(job["progress"])
    listed = all_children(reader, job_id)
    assert len(listed) == children == job["progress"]["total"]
    for status in ("pending", "running", "completed", "failed", "cancelled"):
        assert job["progress"][status] == sum(c["status"] == status for c in listed), (status, job["progress"])
    logs = all_logs(reader.logs, job_id)
    assert len(logs) == job["log_count"]
    assert [r["seq"] for r in logs] == sorted({r["seq"] for r in logs})
    for step in job["steps"]:
        assert step["log_count"] == sum(r["step_name"] == step["name"] for r in logs)
    return job


def read_stream(url: str, *, last_event_id: str | None = None, stop_after: int | None = None) -> list[dict]:
    """SSE events from `url` until its `end` (or `stop_after` events, then the connection is cut)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    out: list[dict] = []
    with httpx.stream("GET", url, headers=headers, timeout=httpx.Timeout(30, read=30)) as response:
        assert response.status_code == 200, response.read()
        for event in sse_events(response):
            out.append(event)
            if event["event"] == "end" or (stop_after is not None and len(out) >= stop_after):
                break
    return out


def folded(events: list[dict]) -> dict:
    first = events[0]
    assert first["event"] == "snapshot"
    return fold(first["data"]["jobs"][0], [(e["event"], e["data"]) for e in events[1:]])


# ---------------------------------------------------------------- across processes


def test_a_job_started_on_one_server_and_watched_on_another_folds_to_its_final_snapshot(deployment, reader):
    a, b = deployment.server(), deployment.server()
    deployment.worker("--workers", "3")
    deployment.worker("--workers", "3")
    job_id = start(a, {"children": 40, "pause": 0.02, "retries": 1})
    events = read_stream(f"{b}/api/events?job={job_id}&children=1")
    assert events[-1]["event"] == "end" and events[-1]["data"]["status"] == "completed"
    final = httpx.get(f"{b}/api/jobs/{job_id}").json()
    assert folded(events) == final["job"]
    seqs = [int(e["id"].rsplit("-", 1)[1]) for e in events]
    assert seqs == sorted(seqs)
    ids_a = httpx.get(f"{a}/api/events?job={job_id}", timeout=30).text
    assert events[-1]["id"] in ids_a  # the same event id on every server
    job = check_exact(reader, job_id, 40)
    assert job["progress"]["completed"] == 40
    assert [s["status"] for s in job["steps"]] == ["completed", "completed"]
    report_lines = [r for r in all_logs(reader.logs, job_id) if r["message"] == "report ran"]
    assert len(report_lines) == 1  # the next step's handler ran once, whoever ended the last child


def test_a_client_moved_to_another_server_mid_stream_resumes_exactly(deployment, reader):
    a, b = deployment.server(), deployment.server()
    deployment.worker("--workers", "2")
    job_id = start(a, {"children": 16, "pause": 0.1})
    first = read_stream(f"{a}/api/events?job={job_id}&children=1", stop_after=12)
    assert first[-1]["event"] != "end", "the job ended before the client moved"
    rest = read_stream(f"{b}/api/events?job={job_id}&children=1", last_event_id=first[-1]["id"])
    assert rest[0]["event"] != "snapshot"  # resumed, not started over
    events = first + rest
    seqs = [int(e["id"].rsplit("-", 1)[1]) for e in events[1:]]
    assert seqs == sorted(set(seqs))  # nothing twice
    final = httpx.get(f"{b}/api/jobs/{job_id}").json()["job"]
    assert folded(events) == final
    streamed_logs = [e["data"]["seq"] for e in events if e["event"] == "log"]
    since = events[0]["data"]["seq"]  # lines before the snapshot are counted in it, not streamed
    assert streamed_logs == [r["seq"] for r in all_logs(reader.logs, job_id) if r["seq"] > since]
    check_exact(reader, job_id, 16)


def test_a_worker_killed_mid_child_its_children_run_again_on_another_as_a_second_attempt(deployment, reader):
    a = deployment.server()
    doomed = deployment.worker("--workers", "3", "--visibility-timeout", "1")
    job_id = start(a, {"children": 6, "pause": 1.5})
    until(lambda: reader.snapshot(job_id)["job"]["steps"][0]["progress"]["running"] == 3, what="3 running")
    doomed.proc.send_signal(signal.SIGKILL)
    doomed.proc.wait(10)
    deployment.worker("--workers", "3", "--visibility-timeout", "1")
    final = reader.wait(job_id, timeout=60)["job"]
    assert final["status"] == "completed", final
    job = check_exact(reader, job_id, 6)
    assert job["progress"]["completed"] == 6
    children = all_children(reader, job_id)
    assert sorted(c["attempt"] for c in children) == [1, 1, 1, 2, 2, 2]
    lost = [r for r in all_logs(reader.logs, job_id) if "worker stopped or vanished" in r["message"]]
    assert len(lost) == 3 and all(r["level"] == "warning" for r in lost)


def test_cancel_through_another_server_stops_children_on_every_worker(deployment, reader):
    a, b = deployment.server(), deployment.server()
    deployment.worker("--workers", "3")
    deployment.worker("--workers", "3")
    job_id = start(a, {"children": 6, "pause": 60})
    until(lambda: reader.snapshot(job_id)["job"]["progress"]["running"] == 6, what="6 running")
    sent = time.monotonic()
    response = httpx.post(f"{b}/api/jobs/{job_id}/cancel", json={})
    assert response.status_code == 202, response.text
    final = reader.wait(job_id, timeout=30)["job"]
    assert time.monotonic() - sent < 10
    assert final["status"] == "cancelled"
    assert final["progress"]["cancelled"] == 6
    assert [s["status"] for s in final["steps"]] == ["cancelled", "skipped"]
    saw = [r["message"] for r in all_logs(reader.logs, job_id) if "saw cancel" in r["message"]]
    assert len(saw) == 6
    assert len({line.rsplit(" ", 1)[1] for line in saw}) == 2  # on both worker processes
    check_exact(reader, job_id, 6)


def test_redis_restarted_mid_job_work_goes_on_and_nothing_is_counted_twice(redis_server, deployment, reader):
    a = deployment.server()
    deployment.worker("--workers", "2")
    job_id = start(a, {"children": 12, "pause": 0.2})
    until(lambda: reader.snapshot(job_id)["job"]["progress"]["completed"] >= 2, what="2 completed")
    redis_server.restart()
    final = reader.wait(job_id, timeout=90)["job"]
    assert final["status"] == "completed", final
    job = check_exact(reader, job_id, 12)
    assert job["progress"]["completed"] == 12
    assert all(c["attempt"] == 1 for c in all_children(reader, job_id))
    events = read_stream(f"{a}/api/events?job={job_id}")
    assert folded(events) == httpx.get(f"{a}/api/jobs/{job_id}").json()["job"]


# ---------------------------------------------------------------- one process, shared Redis


def noop(ctx, n):
    ctx.log("debug", f"noop {n}")


def many(ctx):
    for n in range(ctx.params["children"]):
        ctx.spawn(noop, n)


def after(ctx):
    ctx.log("info", "after ran")


RELEASE = threading.Event()  # lets `slow` children return


def slow(ctx):
    RELEASE.wait(60)


def quick_then_slow(ctx):
    for n in range(ctx.params["quick"]):
        ctx.spawn(noop, n)
    ctx.spawn(slow)


def test_quick_children_end_in_batches_and_none_waits_behind_a_slow_one(redis_server):
    RELEASE.clear()
    orch = Orchestrator(max_workers=2, redis=redis_server.url)
    orch.define("mixed", [Step("mixed", quick_then_slow)])
    try:
        job_id = orch.start("mixed", {"quick": 300})
        # While the slow child runs, every quick one is shown completed: none was taken to wait
        # behind it, and no quick one's end waits for it to return.
        until(lambda: orch.snapshot(job_id)["job"]["steps"][0]["progress"]
              == {"total": 301, "pending": 0, "running": 1, "completed": 300, "failed": 0, "cancelled": 0},
              what="300 quick children completed while the slow one runs")
        assert [c["name"] for c in orch.children(job_id, status="running")["children"]] == ["slow"]
        RELEASE.set()
        assert orch.wait(job_id, timeout=30)["job"]["status"] == "completed"
        job = check_exact(orch, job_id, 301)
        assert job["progress"]["completed"] == 301
        assert all(c["attempt"] == 1 for c in all_children(orch, job_id))
    finally:
        RELEASE.set()
        orch.shutdown()


def spawn_past_cancel(ctx):
    ctx.spawn(slow)
    while not ctx.cancelled:
        time.sleep(0.01)
    try:
        for _ in range(5):
            ctx.spawn(noop, 0)
    except Exception as exc:  # noqa: BLE001 - what the handler saw is the test's subject
        ctx.log("info", f"refused: {type(exc).__name__}: {exc}")


def test_a_spawn_after_a_cancel_is_refused_in_the_handler_and_makes_no_child(redis_server):
    RELEASE.clear()
    orch = Orchestrator(max_workers=2, redis=redis_server.url)
    orch.define("past", [Step("past", spawn_past_cancel)])
    try:
        job_id = orch.start("past")
        until(lambda: orch.snapshot(job_id)["job"]["progress"]["running"] == 1, what="the first child running")
        orch.cancel(job_id)
        until(lambda: any(r["message"].startswith("refused: ") for r in all_logs(orch.logs, job_id)),
              what="the handler's refused spawn")
        RELEASE.set()
        final = orch.wait(job_id, timeout=30)["job"]
        assert final["status"] == "cancelled"
        assert final["progress"]["total"] == 1  # the 5 refused spawns made nothing
        refused = [r["message"] for r in all_logs(orch.logs, job_id) if r["message"].startswith("refused: ")]
        assert refused == [f"refused: Conflict: step 'past' of job {job_id} is cancelled; it takes no new children"]
    finally:
        RELEASE.set()
        orch.shutdown()


def brief(ctx, n):
    time.sleep(0.002)


def flood(ctx):
    spawned = 0
    try:
        while spawned < 20_000:
            ctx.spawn(brief, spawned)
            spawned += 1
    finally:
        ctx.log("info", f"spawned {spawned}")


def test_a_cancel_wins_over_a_busy_job_and_cancels_every_pending_child(redis_server):
    orch = Orchestrator(max_workers=4, redis=redis_server.url)
    orch.define("flood", [Step("flood", flood), Step("after", after)])
    try:
        job_id = orch.start("flood")
        until(lambda: orch.snapshot(job_id)["job"]["progress"]["pending"] >= 500, what="500 pending children")
        assert orch.cancel(job_id)["job"]["status"] == "cancelled"  # while children begin and end all along
        final = orch.wait(job_id, timeout=60)["job"]
        assert final["status"] == "cancelled"
        assert final["progress"]["pending"] == 0 and final["progress"]["cancelled"] >= 500
        assert [s["status"] for s in final["steps"]] == ["cancelled", "skipped"]
        total = final["progress"]["total"]
        job = check_exact(orch, job_id, total)
        spawned = [int(r["message"].split()[1]) for r in all_logs(orch.logs, job_id)
                   if r["message"].startswith("spawned ")]
        assert len(spawned) == 1 and total <= spawned[0] < 20_000  # the handler's loop was stopped
        assert job["progress"]["completed"] + job["progress"]["cancelled"] == total
    finally:
        orch.shutdown()


def test_two_orchestrators_on_one_redis_share_the_work_and_count_exactly(redis_server):
    first = Orchestrator(max_workers=6, redis=redis_server.url)
    second = Orchestrator(max_workers=6, redis=redis_server.url)
    try:
        for orch in (first, second):
            orch.define("many", [Step("many", many), Step("after", after)])
        ids = [first.start("many", {"children": 150}), second.start("many", {"children": 150})]
        for job_id in ids:
            final = second.wait(job_id, timeout=60)["job"]
            assert final["status"] == "completed"
            job = check_exact(first, job_id, 150)
            assert job["progress"]["completed"] == 150
            assert sum(r["message"] == "after ran" for r in all_logs(first.logs, job_id)) == 1
        events, last = first.store.events_after(0, 100_000)
        assert [e.seq for e in events] == list(range(1, last + 1))
        stats = first.stats()
        assert stats["counters"]["child_completed"] == 300
        assert stats["managers"] == {"completed": 2}
    finally:
        first.shutdown()
        second.shutdown()


def test_children_must_be_importable_functions_with_json_arguments(redis_server):
    orch = Orchestrator(max_workers=0, redis=redis_server.url)

    def local(ctx):
        pass

    try:
        for fn in (lambda ctx: None, local):
            with pytest.raises(TypeError, match="module-level function"):
                orch.spawn(fn, step_id="s_none")
        with pytest.raises(InvalidParams):
            orch.spawn(noop, {1, 2}, step_id="s_none")
        assert redis_server.client().get("stepstream:seq") is None  # nothing was written
    finally:
        orch.shutdown()


def test_finished_jobs_beyond_the_retention_leave_redis(redis_server):
    orch = Orchestrator(max_workers=2, redis=None)
    orch.define("many", [Step("many", many), Step("after", after)])
    orch.use_redis(redis_server.url, retain_jobs=2)
    try:
        ids = [orch.start("many", {"children": 3}) for _ in range(4)]
        for job_id in ids:
            try:
                orch.wait(job_id, timeout=30)
            except NotFound:  # finished, and already let go: two newer ones finished before it was waited for
                pass
        # the oldest go right after the job that finished last (as soon as its change is committed)
        until(lambda: [j["id"] for j in orch.jobs()["jobs"]] == ids[:1:-1], what="the newest two listed")
        client = redis_server.client()
        for gone in ids[:2]:  # their data goes right after they leave the listing
            until(lambda gone=gone: not client.exists(f"stepstream:j:{gone}", f"stepstream:kids:{gone}",
                                                      f"stepstream:logs:{gone}"), what=f"{gone}'s keys deleted")
        assert client.zcard("stepstream:finished") == 2
    finally:
        orch.shutdown()


def test_data_a_stopped_process_left_half_deleted_goes_at_the_next_prune(redis_server):
    def deployment(workers: int) -> Orchestrator:
        orch = Orchestrator(max_workers=workers, redis=redis_server.url)
        orch.define("many", [Step("many", many), Step("after", after)])
        return orch

    client = redis_server.client()
    orch = deployment(2)
    first = orch.start("many", {"children": 3})
    orch.wait(first, timeout=30)
    orch.shutdown()
    # A process stops right after taking `first` out of the indexes, before deleting its data.
    stopped = deployment(0)
    stopped.store._prune_script(args=["stepstream:", 0, -1])
    stopped.shutdown()
    assert client.exists(f"stepstream:j:{first}", f"stepstream:kids:{first}") == 2
    orch = deployment(2)
    try:
        assert [j["id"] for j in orch.jobs()["jobs"]] == []
        second = orch.start("many", {"children": 3})
        orch.wait(second, timeout=30)  # its end prunes: what `first` left goes too
        until(lambda: not client.exists(f"stepstream:j:{first}", f"stepstream:kids:{first}",
                                        f"stepstream:logs:{first}") and not client.hlen("stepstream:dropping"),
              what="the half-deleted job's keys gone")
        assert not [k for k in client.scan_iter("stepstream:j:*") if first.encode() in client.hget(k, "manager")]
        assert [j["id"] for j in orch.jobs()["jobs"]] == [second]
    finally:
        orch.shutdown()


def test_a_stream_resumed_from_before_the_trimmed_events_starts_over_from_a_snapshot(redis_server):
    orch = Orchestrator(max_workers=2, replay_size=50, redis=redis_server.url)
    orch.define("many", [Step("many", many), Step("after", after)])
    try:
        job_id = orch.start("many", {"children": 100})
        orch.wait(job_id, timeout=30)
        assert redis_server.client().xlen("stepstream:events") < 400
        from stepstream.events import Gone

        with pytest.raises(Gone):
            orch.store.events_after(1)
        assert json.dumps(orch.snapshot(job_id))  # still readable in full
    finally:
        orch.shutdown()


def test_the_page_and_api_report_the_same_deployment_id_on_every_server(deployment):
    a, b = deployment.server(), deployment.server()
    assert httpx.get(f"{a}/api/health").json()["run_id"] == httpx.get(f"{b}/api/health").json()["run_id"]


def test_rerun_delete_and_metrics_through_the_api_of_a_redis_deployment(redis_server):
    from harness.live import LiveServer
    from stepstream.server import create_app

    orch = Orchestrator(max_workers=4, redis=redis_server.url)
    orch.define("many", [Step("many", many), Step("after", after)])
    try:
        with LiveServer(create_app(orch)) as server:
            base = server.url.rstrip("/")
            created = httpx.post(f"{base}/api/jobs", json={"definition": "many", "params": {"children": 5}})
            assert created.status_code == 201, created.text
            first = created.json()["job"]["id"]
            orch.wait(first, timeout=30)
            again = httpx.post(f"{base}/api/jobs/{first}/rerun", json={})
            assert again.status_code == 201, again.text
            second = again.json()["job"]["id"]
            assert again.json()["job"]["rerun_of"] == first
            assert orch.wait(second, timeout=30)["job"]["progress"]["completed"] == 5
            assert httpx.delete(f"{base}/api/jobs/{second}").status_code in (200, 204)
            assert httpx.get(f"{base}/api/jobs/{second}").status_code == 404
            assert not redis_server.client().exists(f"stepstream:kids:{second}")
            events = orch.store.events_after(0)[0]
            assert events[-1].type == "job_deleted" and events[-1].manager_id == second
            metrics = httpx.get(f"{base}/metrics").text
            assert 'stepstream_jobs{status="completed"} 1.0' in metrics
    finally:
        orch.shutdown()


def test_a_lost_attempt_does_not_use_up_the_retries_and_a_resent_change_is_applied_once(redis_server):
    from stepstream.backends.redis.workqueue import Entry

    orch = Orchestrator(max_workers=0, redis=redis_server.url)
    orch.define("many", [Step("many", many), Step("after", after)])
    store = orch.store
    try:
        job_id = orch.start("many", {"children": 0})
        step_id = orch.snapshot(job_id)["job"]["steps"][0]["id"]
        child_id = orch.spawn(noop, 1, step_id=step_id, retries=1)
        entry = Entry(b"0-1", "child", child_id, 1)
        child = store._runnable(entry)  # taken: running, attempt 1
        assert child is not None and child.status == "running"
        store.lose_attempt(child, 1, "its worker vanished")  # attempt 2, retries untouched
        again = store.get(child_id)
        assert (again.status, again.attempt) == ("pending", 2)
        running = store._runnable(Entry(b"0-2", "child", child_id, 2))
        assert running is not None
        store.end_child(running, "boom", None, 2)  # the first real failure: its one retry
        third = store.get(child_id)
        assert (third.status, third.attempt) == ("pending", 3)
        assert orch.snapshot(child_id)["job"]["attempts"] == [  # each earlier attempt's error, the lost one too
            {"attempt": 1, "error": "its worker vanished"}, {"attempt": 2, "error": "boom"}]
        # a commit whose reply was lost is sent again: applied once, not refused by its own guards
        before = redis_server.client().get("stepstream:seq")
        original = store._commit

        def commit_twice(*args, **kwargs):
            original(*args, **kwargs)
            return original(*args, **kwargs)

        store._commit = commit_twice
        began = store._runnable(Entry(b"0-3", "child", child_id, 3))
        store._commit = original
        assert began is not None and began.status == "running"
        assert int(redis_server.client().get("stepstream:seq")) - int(before) == 3  # status + 2 progress, once
    finally:
        orch.shutdown(wait=False)


def test_a_hash_field_is_written_and_read_as_the_json_encoder_and_parser_do():
    from stepstream.backends.redis import codec
    from stepstream.encoding import dumps

    scalars = [None, True, False, 0, -1, 7, 10**15, -(10**16), 0.0, -0.0, 1.5, -2.25, 1796221798.2035394, 1e-7,
               1e300, 5e-324, float("nan"), float("inf"), float("-inf"), "", "plain", 'a "quoted" \\ one', "é",
               [], [1, "x"], {"args": [], "kwargs": {}}]
    for scalar in scalars:
        text = codec.field_json(scalar)
        assert text == dumps(scalar), scalar
        assert codec.value(text.encode()) == json.loads(text) or text == "null", scalar
        assert type(codec.value(text.encode())) is type(json.loads(text)), scalar


def test_the_quicker_the_children_the_more_a_worker_takes_at_once():
    from stepstream.backends.redis.worker import CHILD_BATCH, MAX_CHILD_BATCH, SHORT_CHILD, RedisWorker

    worker = RedisWorker(attempts=None, store=None, max_workers=0)  # type: ignore[arg-type]
    try:
        worker._took.update(slow=SHORT_CHILD, two_ms=0.002, half_ms=0.0005, noop=0.00002)
        assert not worker._short("unknown_yet") and not worker._short("slow")
        assert [worker._batch(fn) for fn in ("two_ms", "half_ms", "noop")] == [CHILD_BATCH, 20, MAX_CHILD_BATCH]
        assert (CHILD_BATCH, MAX_CHILD_BATCH) == (8, 32)
    finally:
        worker.pool.shutdown(wait=False)
