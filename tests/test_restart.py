"""History across restarts, with real server processes on a SQLite file: finished jobs come back
exactly as they were, a job killed mid-run is settled, a stream resumes across the restart with
exactly the events it missed, `kill -9` at random moments never loses what a client saw, and a
database of the first schema version opens."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import threading
from pathlib import Path

import httpx
import pytest

from harness.folding import check_progress, fold
from harness.live import sse_events
from harness.processes import Served, base_of
from stepstream import Orchestrator, Step
from stepstream.events import MERGEABLE
from stepstream.journal import sqlite as journal_sqlite

TIMEOUT = 30

APP = '''
import time
from pathlib import Path

from stepstream import Orchestrator, Step
from stepstream.events import MERGEABLE

orch = Orchestrator(max_workers=4, max_finished=2)


def leaf(ctx, n):
    ctx.log("info", f"leaf {n} of {ctx.step_name}")
    hold = ctx.params.get("hold")
    while hold and not Path(hold).exists() and not ctx.cancelled:
        time.sleep(0.01)
    time.sleep(ctx.params.get("pause", 0))
    if n % 5 == 4:
        raise ValueError(f"leaf {n} failed")


def crawl(ctx):
    for n in range(ctx.params.get("n", 6)):
        ctx.spawn(leaf, n)


def report(ctx):
    ctx.log("info", "report written")


orch.define("crawl", [Step("crawl", crawl), Step("report", report)])
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "jobs.py").write_text(APP)
    return tmp_path


def serve(project: Path) -> Served:
    return Served("jobs:orch", "--port", "0", "--db", str(project / "history.db"), cwd=project)


def everything(client: httpx.Client, base: str, job_id: str) -> dict:
    """What a user can read of a job: its snapshot, every child and every log line."""
    job = client.get(f"{base}/api/jobs/{job_id}").json()["job"]
    children, cursor = [], 0
    while cursor is not None:
        page = client.get(f"{base}/api/jobs/{job_id}/children", params={"cursor": cursor, "limit": 7}).json()
        children += page["children"]
        cursor = page["next"]
    logs = client.get(f"{base}/api/jobs/{job_id}/logs", params={"format": "ndjson"}).text.splitlines()
    step = client.get(f"{base}/api/jobs/{job['steps'][0]['id']}").json()["job"]
    return {"job": job, "children": children, "logs": [json.loads(line) for line in logs], "step": step}


def finish(client: httpx.Client, base: str, params: dict) -> str:
    job_id = client.post(f"{base}/api/jobs", json={"definition": "crawl", "params": params}).json()["job"]["id"]
    with client.stream("GET", f"{base}/api/events", params={"job": job_id}) as stream:
        assert [e["event"] for e in sse_events(stream)][-1] == "end"
    return job_id


def test_finished_jobs_are_exactly_the_same_after_a_restart(project):
    with serve(project) as first, httpx.Client(timeout=TIMEOUT) as client:
        base = base_of(first.url())
        ids = [finish(client, base, {"n": n}) for n in (6, 3, 10)]  # max_finished=2: the first one leaves memory
        before = {job_id: everything(client, base, job_id) for job_id in ids}
        listing = client.get(f"{base}/api/jobs").json()["jobs"]
        assert first.interrupt()[0] == 130
    with serve(project) as second, httpx.Client(timeout=TIMEOUT) as client:
        base = base_of(second.url())
        for job_id in ids:
            assert everything(client, base, job_id) == before[job_id]
        assert client.get(f"{base}/api/jobs").json()["jobs"] == listing
        assert [j["id"] for j in client.get(f"{base}/api/jobs", params={"status": "completed"}).json()["jobs"]] \
            == [job_id for job_id in ids[::-1] if before[job_id]["job"]["status"] == "completed"]
        again = client.post(f"{base}/api/jobs/{ids[0]}/rerun")  # an old job can be run again
        assert again.status_code == 201 and again.json()["job"]["params"] == {"n": 6}
        assert client.delete(f"{base}/api/jobs/{ids[1]}").status_code == 204
        assert client.get(f"{base}/api/jobs/{ids[1]}").status_code == 404


class Recorder:
    """Follows a `?job=` stream in a thread, resuming with Last-Event-ID after every cut, and
    keeps every event it received."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.base = ""
        self.events: list[dict] = []
        self.snapshots_after_resume = 0
        self.cut = threading.Event()
        self.moved = threading.Event()
        self.done = threading.Event()
        self.lock = threading.Lock()

    def follow(self, base: str) -> None:
        self.base = base
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()

    def _run(self) -> None:
        self.cut.clear()
        headers = {"Last-Event-ID": self.events[-1]["id"]} if self.events else {}
        try:
            with httpx.stream("GET", f"{self.base}/api/events", params={"job": self.job_id}, headers=headers,
                              timeout=TIMEOUT) as response:
                if response.status_code == 204:
                    self.done.set()
                    return
                for event in sse_events(response):
                    with self.lock:
                        if headers and event["event"] == "snapshot":
                            self.snapshots_after_resume += 1
                        self.events.append(event)
                    self.moved.set()
                    if event["event"] == "end":
                        self.done.set()
                        return
        except httpx.HTTPError:
            pass
        finally:
            self.cut.set()  # the stream stopped: ended, or cut by the server's death


def test_a_job_killed_mid_run_settles_and_its_stream_resumes_exactly_across_the_restart(project):
    hold = project / "never"
    with serve(project) as first, httpx.Client(timeout=TIMEOUT) as client:
        base = base_of(first.url())
        job_id = client.post(f"{base}/api/jobs", json={"definition": "crawl", "params": {"n": 9, "hold": str(hold)}}
                             ).json()["job"]["id"]
        recorder = Recorder(job_id)
        recorder.follow(base)
        while True:  # until four children run (the pool is full) and the stream showed it
            recorder.moved.wait(TIMEOUT)
            recorder.moved.clear()
            with recorder.lock:
                last = recorder.events[-1]["data"]
            progress = last["jobs"][0]["steps"][0]["progress"] if "jobs" in last else last.get("progress")
            if progress and progress["running"] == 4 and last.get("step_name", "crawl") == "crawl":
                break
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(TIMEOUT)
        assert recorder.cut.wait(TIMEOUT)
    with serve(project) as second, httpx.Client(timeout=TIMEOUT) as client:
        base = base_of(second.url())
        recorder.follow(base)
        assert recorder.done.wait(TIMEOUT)
        final = client.get(f"{base}/api/jobs/{job_id}").json()
        job = final["job"]
        assert recorder.snapshots_after_resume == 0, "resumed with a snapshot instead of the missed events"
        seqs = [e["data"]["seq"] for e in recorder.events]
        assert seqs == sorted(set(seqs))
        assert fold(recorder.events[0]["data"]["jobs"][0],
                    [(e["event"], e["data"]) for e in recorder.events[1:]]) == job
        assert job["status"] == "failed" and "interrupted" in job["error"]
        assert [s["status"] for s in job["steps"]] == ["failed", "skipped"]
        for step in job["steps"]:
            check_progress(step["progress"])
        progress = job["progress"]
        assert progress["running"] == progress["pending"] == 0 and progress["failed"] >= 4
        children = client.get(f"{base}/api/jobs/{job_id}/children").json()["children"]
        assert len(children) == 9 and not {c["status"] for c in children} & {"running", "pending"}
        streamed_logs = [e["data"]["seq"] for e in recorder.events if e["event"] == "log"]
        logs = client.get(f"{base}/api/jobs/{job_id}/logs", params={"limit": 5000}).json()["logs"]
        snapshot_seq = recorder.events[0]["data"]["seq"]
        assert streamed_logs == [r["seq"] for r in logs if r["seq"] > snapshot_seq]
        assert job["log_count"] == len(logs)


def invariants(db: Path) -> tuple[int, dict[int, dict]]:
    """Open the database as a restarted server would (settling what ran) and check every job;
    the last seq and the events kept, by seq."""
    orch = Orchestrator(max_workers=1, db=db)
    try:
        page = orch.jobs(limit=200)
        for summary in page["jobs"]:
            job = orch.snapshot(summary["id"])["job"]
            assert job["status"] not in ("running", "pending"), job["id"]
            check_progress(job["progress"])
            for key in job["progress"]:
                assert job["progress"][key] == sum(s["progress"][key] for s in job["steps"])
            children = orch.children(job["id"], limit=1000)["children"]
            assert len(children) == job["progress"]["total"]
            for step in job["steps"]:
                check_progress(step["progress"])
                assert step["status"] not in ("running", "pending")
                mine = [c for c in children if c["step_id"] == step["id"]]
                for status in ("completed", "failed", "cancelled"):
                    assert step["progress"][status] == sum(c["status"] == status for c in mine)
        seq = orch.seq
    finally:
        orch.shutdown()
    with sqlite3.connect(db) as conn:
        kept = {s: {"type": t, "data": json.loads(d)} for s, t, d in conn.execute("SELECT seq, type, data FROM events")}
    return seq, kept


def progress_key(type_: str, data: dict) -> str:
    return data["step_id"] if type_ == "step_progress" else data["manager_id"]


def test_kill_9_at_random_moments_never_loses_what_a_client_saw(project):
    rng = random.Random(8)
    db = project / "history.db"
    killed_mid_run = 0
    for round_ in range(8):
        with serve(project) as server, httpx.Client(timeout=TIMEOUT) as client:
            base = base_of(server.url())
            job_id = client.post(f"{base}/api/jobs", json={"definition": "crawl",
                                                           "params": {"n": 400, "pause": 0.01}}).json()["job"]["id"]
            recorder = Recorder(job_id)
            recorder.follow(base)
            wanted = rng.randint(1, 700)  # events seen before the kill: from the start to well into the job
            while len(recorder.events) < wanted and not recorder.done.is_set():
                recorder.moved.wait(TIMEOUT)
                recorder.moved.clear()
            killed_mid_run += not recorder.done.is_set()
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(TIMEOUT)
            recorder.cut.wait(TIMEOUT)
        seq, kept = invariants(db)
        with recorder.lock:
            seen = [e for e in recorder.events if e["event"] != "snapshot"]
            assert recorder.events[0]["data"]["seq"] <= seq, f"round {round_}: the snapshot saw a lost state"
        later_progress = {(e["type"], progress_key(e["type"], e["data"])): s for s, e in sorted(kept.items())
                          if e["type"] in MERGEABLE}
        for event in seen:
            stored = kept.get(event["data"]["seq"])
            if stored is None and event["event"] in MERGEABLE:  # superseded: a later one of its key is kept
                key = (event["event"], progress_key(event["event"], event["data"]))
                assert later_progress.get(key, -1) > event["data"]["seq"], f"round {round_}: {event} lost"
                continue
            assert stored is not None, f"round {round_}: seq {event['data']['seq']} was seen, then lost"
            assert stored == {"type": event["event"], "data": event["data"]}
    assert killed_mid_run >= 6, f"the kills should land while jobs run ({killed_mid_run} of 8 did)"


def test_a_database_of_the_first_schema_version_opens_and_keeps_its_jobs(tmp_path):
    db = tmp_path / "v1.db"
    orch = Orchestrator(max_workers=1, db=db)
    orch.define("d", [Step("a", lambda ctx: ctx.log("info", "kept"))])
    job_id = orch.start("d", {"x": 1})
    before = orch.wait(job_id, TIMEOUT)["job"]
    orch.shutdown()
    later = ("managers_by_status", "managers_by_definition", "logs_by_step", "managers_unsettled")
    with sqlite3.connect(db) as conn:  # undo what later versions added: this is a database that version 1 made
        for index in later:
            conn.execute(f"DROP INDEX {index}")
        conn.execute("PRAGMA user_version=1")
    reopened = Orchestrator(max_workers=1, db=db, max_finished=1)
    try:
        assert reopened.snapshot(job_id)["job"] == before
        assert [r["message"] for r in reopened.logs(job_id, step="a")["logs"]][1] == "kept"
    finally:
        reopened.shutdown()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == journal_sqlite.SCHEMA_VERSION
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert set(later) <= indexes
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(journal_sqlite.SchemaError, match="version 99"):
        Orchestrator(max_workers=1, db=db)
