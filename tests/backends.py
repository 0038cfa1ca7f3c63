"""Orchestrators of every storage mode for the behaviour suite, and what its tests share.

`Backend(kind)` makes orchestrators of one kind, with the suite's definitions registered
(`tests.behaviour_jobs`) and worker threads in this process:

- `memory`: `Orchestrator()`;
- `sqlite`: `Orchestrator(db=...)` in the test's temp dir, holding at most one finished job in
  memory (`max_finished=1`) and a replay ring of the minimum size, so what is older is read back
  from the database, as after a while of real use;
- `redis`: `Orchestrator(...).use_redis(url, prefix=...)` on a redis-server shared by the module,
  each test under its own key prefix: work runs from the shared Redis queue;
- `celery`: the same Redis state, the work carried and run by Celery (`use_celery`): a real
  Celery worker (`celery.worker.WorkController`, thread pool of `max_workers`) consuming this
  test's own queue on the same redis-server (database 1), in this process so the suite's gates
  reach its children. (tests/test_celery.py runs Celery worker processes.)
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from harness.folding import check_progress, fold
from stepstream import Orchestrator
from stepstream.model import TERMINAL
from tests.behaviour_jobs import define_jobs, open_gates

BACKENDS = ("memory", "sqlite", "redis", "celery")


class Backend:
    """Makes orchestrators of one kind for one test; `close()` shuts them all down."""

    def __init__(self, kind: str, tmp: Path, redis_url: str | None = None) -> None:
        self.kind = kind
        self.tmp = tmp
        self.redis_url = redis_url
        self.token = secrets.token_hex(6)  # this test's gates and Redis keys
        self.made: list[Orchestrator] = []
        self.celery_workers: list[CeleryThreads] = []

    def orchestrator(self, max_workers: int = 4, **settings: Any) -> Orchestrator:
        if self.kind == "memory":
            orch = Orchestrator(max_workers=max_workers, **settings)
        elif self.kind == "sqlite":
            settings = {"max_finished": 1, "replay_size": 16, **settings}
            orch = Orchestrator(max_workers=max_workers, db=self.tmp / f"jobs-{len(self.made)}.db", **settings)
        elif self.kind == "redis":
            assert self.redis_url is not None
            orch = Orchestrator(max_workers=max_workers, **settings)
            orch.use_redis(self.redis_url, prefix=f"t{self.token}:")
        elif self.kind == "celery":
            assert self.redis_url is not None
            import celery

            orch = Orchestrator(max_workers=max_workers, **settings)
            orch.use_redis(self.redis_url, prefix=f"t{self.token}:", workers=0)
            app = celery.Celery(f"t{self.token}", broker=self.redis_url.rsplit("/", 1)[0] + "/1",
                                set_as_current=False)
            app.conf.task_default_queue = f"t{self.token}-{len(self.made)}"  # this orchestrator's alone
            orch.use_celery(app)
            if max_workers:
                self.celery_workers.append(CeleryThreads(app, max_workers))
        else:
            raise ValueError(f"unknown backend {self.kind!r}")
        self.made.append(orch)
        return define_jobs(orch)

    @contextlib.contextmanager
    def writes_held(self, orch: Orchestrator) -> Iterator[None]:
        """Meanwhile, writes to the durable storage wait: for SQLite, another connection holds the
        database's write lock (a slow disk or a backup, say). Memory has none; a Redis change is
        written as it is made (Redis's own persistence is not stepstream's)."""
        if self.kind != "sqlite":
            yield
            return
        conn = sqlite3.connect(orch.journal.path, isolation_level=None, timeout=5)
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield
        finally:
            conn.close()  # rolls back: the journal's writer goes on

    def close(self) -> None:
        open_gates(self.token)  # held jobs return (the threads of a memory orchestrator end)
        for worker in self.celery_workers:
            worker.stop()
        for orch in self.made:
            if self.kind in ("redis", "celery"):  # its worker thread takes up to 0.5 s to notice: not waited for here
                closing = threading.Thread(target=orch.shutdown, kwargs={"wait": False}, daemon=True)
                closing.start()
                _closing.append(closing)
            else:
                orch.shutdown(wait=False)  # closes its SQLite journal


class CeleryThreads:
    """A Celery worker of `app` in this process: its consumer on a thread, `concurrency` pool
    threads, started once it consumes (as `celery -A app worker -P threads` would run it)."""

    def __init__(self, app: Any, concurrency: int) -> None:
        from celery.contrib.testing.worker import TestWorkController

        app.finalize()
        app.set_current()  # a pool thread finds the task in the current app (as `celery -A app` sets it)
        app.set_default()
        self.worker = TestWorkController(app=app, concurrency=concurrency, pool="threads", loglevel="ERROR",
                                         hostname=f"{app.main}@behaviour", without_heartbeat=True,
                                         without_mingle=True, without_gossip=True, ready_callback=None)
        self.thread = threading.Thread(target=self.worker.start, daemon=True)
        self.thread.start()
        assert self.worker._on_started.wait(30), "the Celery worker did not start within 30 s"

    def stop(self) -> None:
        from celery.worker import state

        state.should_terminate = 0  # its consumer loop ends; what runs is waited for
        try:
            self.thread.join(30)
            assert not self.thread.is_alive(), "the Celery worker did not stop within 30 s"
        finally:
            state.should_terminate = None


_closing: list[threading.Thread] = []  # Redis orchestrators shutting down


def closed_all(timeout: float = 30) -> None:
    """Wait until every Redis orchestrator of the suite has shut down (before its server stops)."""
    while _closing:
        _closing.pop().join(timeout)


def events_until(orch: Orchestrator, after: int, last: int, timeout: float = 30) -> list[tuple[str, dict]]:
    """The (type, data) events with seq in (`after`, `last`] from the backend's event source, as a
    stream reads them (SQLite: once durable; Redis: once its tail has read them)."""
    assert orch.store.wait_visible(last, timeout)
    out: list[tuple[str, dict]] = []
    deadline = time.monotonic() + timeout
    seen = after
    while seen < last:
        events, _ = orch.store.events_after(seen, limit=10_000)
        events = [e for e in events if e.seq <= last]
        for event in events:
            assert event.seq > seen, "events out of seq order"
            assert event.data["seq"] == event.seq
            seen = event.seq
            out.append((event.type, event.data))
        if not events:
            assert time.monotonic() < deadline, f"events up to seq {last} not readable within {timeout} s"
            time.sleep(0.01)
    return out


def assert_folds(orch: Orchestrator, snapshots: Iterable[dict], final: dict) -> None:
    """Each snapshot plus the events after its seq folds into `final` (a snapshot taken once the
    job had finished), every progress event on the way adds up, and no job changes once it was
    terminal."""
    for snapshot in snapshots:
        assert snapshot["seq"] <= final["seq"]
        events = events_until(orch, snapshot["seq"], final["seq"])
        ended: set[str] = set()
        for type_, data in events:
            if type_ in ("step_progress", "job_progress"):
                check_progress(data["progress"])
            elif type_ == "job_status":
                assert data["job_id"] not in ended, f"{data['job_id']} changed after it was terminal"
                if data["status"] in TERMINAL:
                    ended.add(data["job_id"])
        folded = fold(snapshot["job"], events)
        assert folded == final["job"], f"snapshot at seq {snapshot['seq']} plus the events after it differs"


def check_counts(job: dict) -> None:
    """The counts of a manager's snapshot add up: each step's, and the manager's as their sum."""
    check_progress(job["progress"])
    for step in job["steps"]:
        check_progress(step["progress"])
    for key in job["progress"]:
        assert job["progress"][key] == sum(s["progress"][key] for s in job["steps"]), (key, job)
