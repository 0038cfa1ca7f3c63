"""The SQLite journal on its own: random schedules of every store operation reopen exactly,
retention keeps what it should, and memory lets go of finished jobs only once they are durable."""

from __future__ import annotations

import json
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import settings
from hypothesis.stateful import invariant

from harness.folding import check_progress
from stepstream import Orchestrator, Step
from stepstream.backends.memory import MemoryStore
from stepstream.events import MERGEABLE
from stepstream.journal import sqlite as journal_sqlite
from stepstream.journal.sqlite import SqliteJournal
from tests.test_store import StoreMachine, check_history

TIMEOUT = 20


class JournaledStoreMachine(StoreMachine):
    """The store's state machine with a SQLite journal: after any schedule, the store reopened
    from the file holds the same jobs (an unfinished one settled as interrupted), the same
    events, and the same logs."""

    def make_store(self) -> MemoryStore:
        self.dir = tempfile.TemporaryDirectory()
        self.path = Path(self.dir.name) / "j.db"
        return MemoryStore(replay_size=1_000_000, journal=SqliteJournal(self.path))

    @invariant()
    def nothing_unwritten_is_visible(self):
        assert self.store.visible_seq <= self.store.seq

    def teardown(self):
        try:
            assert self.store.wait_visible(self.store.seq, TIMEOUT)
            check_history(self.store, self.manager.id, self.snapshots)
            before = self.store.snapshot(self.manager.id)["job"]
            logs = self.store.logs(self.manager.id, limit=100_000)["logs"]
            events = [(e.seq, e.type, e.key, e.data) for e in self.store.events_after(0, 1_000_000)[0]]
            settled = self.manager.settled
            self.store.close()
            with sqlite3.connect(self.path) as conn:
                rows = conn.execute("SELECT seq, type, key, data FROM events")
                kept = [(s, t, k, json.loads(d)) for s, t, k, d in rows]
            assert_kept(kept, events)
            reopened = MemoryStore(replay_size=1_000_000, journal=SqliteJournal(self.path))
            after = reopened.snapshot(self.manager.id)["job"]
            if settled:
                assert after == before
                assert reopened.logs(self.manager.id, limit=100_000)["logs"] == logs
            else:
                assert after["status"] in ("failed", "cancelled") and after["finished_at"]
                assert all(s["status"] not in ("running", "pending") for s in after["steps"])
                check_progress(after["progress"])
                for key in after["progress"]:
                    assert after["progress"][key] == sum(s["progress"][key] for s in after["steps"])
                assert after["progress"]["total"] == before["progress"]["total"]
            reopened.close()
        finally:
            self.dir.cleanup()


def assert_kept(kept: list[tuple], sent: list[tuple]) -> None:
    """Every event is kept as it was sent, in order, but for progress events superseded by a
    later one of the same key (latest wins: its counts are absolute)."""
    assert all(event in sent for event in kept)
    assert [e for e in kept if e[1] not in MERGEABLE] == [e for e in sent if e[1] not in MERGEABLE]
    latest = {(e[1], e[2]): e[0] for e in kept if e[1] in MERGEABLE}
    for seq, type_, key, _ in sent:
        if type_ in MERGEABLE:
            assert latest.get((type_, key), -1) >= seq, f"progress at seq {seq} is neither kept nor superseded"


TestJournaledStoreMachine = JournaledStoreMachine.TestCase
TestJournaledStoreMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def finish(orch: Orchestrator, n: int) -> list[str]:
    """Run `n` jobs one after another to their durable end (so they are the oldest in order)."""
    ids = []
    for i in range(n):
        ids.append(orch.start("d", {"n": i}))
        orch.wait(ids[-1], TIMEOUT)
    orch.store.wait_visible(orch.seq)
    return ids


def test_retention_keeps_the_newest_finished_jobs_and_never_a_running_one(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_sqlite, "RETENTION_EVERY", 0.0)  # a pass with every batch
    orch = Orchestrator(max_workers=2, max_finished=1, journal=SqliteJournal(tmp_path / "r.db", retain_jobs=2))
    try:
        orch.define("d", [Step("a", lambda ctx: ctx.spawn(lambda c: c.log("info", "x")))])
        ids = finish(orch, 5)
        finish(orch, 1)  # one more batch, one more retention pass
        listed = [j["id"] for j in orch.jobs()["jobs"]]
        assert ids[0] not in listed and ids[1] not in listed and ids[4] in listed
        for gone in ids[:3]:
            with pytest.raises(KeyError):
                orch.snapshot(gone)
        with sqlite3.connect(tmp_path / "r.db") as conn:
            assert conn.execute("SELECT count(*) FROM managers").fetchone()[0] == 2
            kept = {r[0] for r in conn.execute("SELECT DISTINCT manager_id FROM children")}
            assert len(kept) == 2 and not {r[0] for r in conn.execute("SELECT manager_id FROM logs")} - kept
    finally:
        orch.shutdown()


def test_retention_by_age_spares_unfinished_jobs(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_sqlite, "RETENTION_EVERY", 0.0)
    journal = SqliteJournal(tmp_path / "a.db", retain_days=1e-9)  # every finished job is too old
    orch = Orchestrator(max_workers=2, max_finished=1, journal=journal)
    gate = threading.Event()
    try:
        orch.define("d", [Step("a", lambda ctx: None)])
        orch.define("held", [Step("a", lambda ctx: gate.wait(TIMEOUT))])
        held = orch.start("held")
        finish(orch, 3)
        finish(orch, 1)
        assert [j["id"] for j in orch.jobs()["jobs"] if j["id"] == held] == [held]
        with sqlite3.connect(tmp_path / "a.db") as conn:
            statuses = [r[0] for r in conn.execute("SELECT status FROM managers")]
        assert "running" in statuses and statuses.count("completed") <= 1
    finally:
        gate.set()
        orch.shutdown()


def test_finished_jobs_leave_memory_only_once_durable_and_are_then_read_from_the_journal(tmp_path):
    orch = Orchestrator(max_workers=2, max_finished=2, db=tmp_path / "m.db")
    try:
        orch.define("d", [Step("a", lambda ctx: [ctx.spawn(lambda c, n: c.log("info", f"{n}"), n) for n in range(3)])])
        ids = finish(orch, 6)
        held = set(orch.store._managers)
        assert len(held) <= 2 and ids[0] not in held
        old = orch.snapshot(ids[0])
        assert old["job"]["status"] == "completed" and old["job"]["progress"]["completed"] == 3
        assert len(orch.children(ids[0])["children"]) == 3
        step = old["job"]["steps"][0]
        assert orch.snapshot(step["id"])["job"]["manager_id"] == ids[0]
        assert [r["message"] for r in orch.logs(ids[0], step="a", level="info")["logs"]][1:4] == ["0", "1", "2"] \
            or sorted(r["message"] for r in orch.logs(ids[0], step="a")["logs"] if r["message"].isdigit()) \
            == ["0", "1", "2"]
        assert [j["id"] for j in orch.jobs(limit=3)["jobs"]] == ids[::-1][:3]
        page2 = orch.jobs(limit=3, cursor=orch.jobs(limit=3)["next"])
        assert [j["id"] for j in page2["jobs"]] == ids[::-1][3:]
        again = orch.rerun(ids[0])
        assert orch.wait(again, TIMEOUT)["job"]["rerun_of"] == ids[0]
        orch.delete(ids[0])
        with pytest.raises(KeyError):
            orch.snapshot(ids[0])
    finally:
        orch.shutdown()


class Flaky(SqliteJournal):
    """A journal whose writes fail while `failing` is set (a full disk, say)."""

    failing = False

    def write(self, batch):
        if self.failing:
            raise OSError(28, "No space left on device")
        super().write(batch)


def test_a_failing_journal_is_reported_and_nothing_is_lost_or_shown_early(tmp_path, caplog):
    from harness.live import LiveServer
    from stepstream.server import create_app

    journal = Flaky(tmp_path / "f.db")
    orch = Orchestrator(max_workers=2, journal=journal)
    gate = threading.Event()
    try:
        orch.define("d", [Step("a", lambda ctx: [ctx.spawn(lambda c: gate.wait(TIMEOUT)) for _ in range(3)])])
        with LiveServer(create_app(orch)) as srv:
            job_id = orch.start("d")
            journal.failing = True
            gate.set()
            visible = orch.store.visible_seq
            health = None
            while health is None or health.status_code != 503:  # the writer notices on its next batch
                health = httpx.get(f"{srv.url}/api/health", timeout=TIMEOUT)
            assert "No space left" in health.json()["journal_error"] and health.json()["status"] == "degraded"
            assert orch.store.visible_seq == visible  # nothing unwritten is shown
            journal.failing = False
            final = orch.wait(job_id, TIMEOUT)
            assert orch.store.wait_visible(orch.seq, TIMEOUT)
            assert httpx.get(f"{srv.url}/api/health", timeout=TIMEOUT).status_code == 200
        assert final["job"]["status"] == "completed"
        assert "writing to the journal failed" in caplog.text and "works again" in caplog.text
    finally:
        gate.set()
        orch.shutdown()
    reopened = Orchestrator(max_workers=1, db=tmp_path / "f.db")
    try:
        assert reopened.snapshot(job_id)["job"] == final["job"]
    finally:
        reopened.shutdown()


def test_closing_while_the_journal_fails_ends_promptly_and_says_what_was_not_kept(tmp_path, caplog):
    journal = Flaky(tmp_path / "c.db")
    orch = Orchestrator(max_workers=1, journal=journal)
    orch.define("d", [Step("a", lambda ctx: ctx.log("info", "never written"))])
    journal.failing = True
    job_id = orch.store.create_manager("d", ["a"], {}, params_json="{}")[0].id  # no wait for durability
    started = time.monotonic()
    orch.shutdown()
    assert time.monotonic() - started < 5
    assert "not written to the journal" in caplog.text
    assert orch.store.visible_seq < orch.seq  # what was never written was never shown
    reopened = Orchestrator(max_workers=1, db=tmp_path / "c.db")
    try:
        with pytest.raises(KeyError):
            reopened.snapshot(job_id)
    finally:
        reopened.shutdown()


def test_a_full_database_is_reported_as_full_and_a_new_job_is_refused_at_once(tmp_path):
    """SQLite rolls a transaction back by itself when the database is full: the error shown is
    that one (not the failed ROLLBACK's), and `POST /api/jobs` answers 503 at once, creating
    nothing, until the writes work again."""
    from harness.live import LiveServer
    from stepstream.server import create_app

    journal = SqliteJournal(tmp_path / "full.db")
    orch = Orchestrator(max_workers=1, journal=journal)
    orch.define("d", [Step("a", lambda ctx: None)])
    try:
        with LiveServer(create_app(orch)) as srv:
            pages = journal._writer.execute("PRAGMA page_count").fetchone()[0]
            journal._writer.execute(f"PRAGMA max_page_count={pages + 2}")  # a disk that is full
            manager, _ = orch.store.create_manager("d", ["a"], {}, params_json="{}")
            for _ in range(200):
                orch.store.log(manager.steps[0].id, "info", "y" * 2000)
            deadline = time.monotonic() + TIMEOUT
            while orch.journal_error is None:
                assert time.monotonic() < deadline, "the writer never failed"
                time.sleep(0.01)
            assert "database or disk is full" in orch.journal_error
            started = time.monotonic()
            listing = httpx.get(f"{srv.url}/api/jobs", timeout=TIMEOUT)  # it would show what is not durable
            assert time.monotonic() - started < 5 and listing.status_code == 503, listing.text
            started = time.monotonic()
            refused = httpx.post(f"{srv.url}/api/jobs", json={"definition": "d"}, timeout=TIMEOUT)
            assert time.monotonic() - started < 3
            assert refused.status_code == 503 and refused.headers["retry-after"]
            assert refused.json()["error"]["code"] == "storage_unavailable"
            assert "database or disk is full" in refused.json()["error"]["message"]
            journal._writer.execute("PRAGMA max_page_count=1073741823")  # space again
            assert orch.store.wait_visible(orch.seq, TIMEOUT)
            listed = httpx.get(f"{srv.url}/api/jobs", timeout=TIMEOUT).json()["jobs"]
            assert [job["id"] for job in listed] == [manager.id]  # the refused job was never created
            assert httpx.post(f"{srv.url}/api/jobs", json={"definition": "d"}, timeout=TIMEOUT).status_code == 201
    finally:
        orch.shutdown()
