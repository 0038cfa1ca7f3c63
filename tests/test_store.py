"""The store under concurrency and random schedules: invariants, seq order, exact replay."""

from __future__ import annotations

import random
import threading
import time

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from harness.folding import check_progress, fold
from stepstream import Orchestrator, Step, wire
from stepstream.backends.memory import Gone, MemoryStore
from stepstream.jobs import FinishedChildren
from stepstream.journal.sqlite import SqliteJournal
from stepstream.model import TERMINAL, Conflict

TIMEOUT = 30


def all_events(store: MemoryStore) -> list:
    events, _ = store.events_after(0, limit=10**9)
    return events


def pairs(events) -> list[tuple[str, dict]]:
    return [(e.type, e.data) for e in events]


def check_history(store: MemoryStore, manager_id: str, snapshots: list[dict]) -> None:
    """Seq is contiguous and increasing, every progress event adds up, and every snapshot taken
    along the way plus the events after it folds into the final snapshot exactly."""
    events = all_events(store)
    assert [e.seq for e in events] == list(range(1, store.seq + 1))
    for e in events:
        assert e.data["seq"] == e.seq
        if e.type in ("step_progress", "job_progress"):
            check_progress(e.data["progress"])
    finished: set[str] = set()
    for e in events:
        if e.type == "job_status":
            assert e.data["job_id"] not in finished, f"{e.data['job_id']} changed after it was terminal"
            if e.data["status"] in TERMINAL:
                finished.add(e.data["job_id"])
    final = store.snapshot(manager_id)
    assert snapshots, "no snapshot was taken during the run"
    for snap in snapshots + [final]:
        folded = fold(snap["job"], pairs(e for e in events if e.seq > snap["seq"]))
        assert folded == final["job"], f"replay from seq {snap['seq']} differs"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_many_threads_spawning_finishing_failing_and_retrying_replay_exactly(seed):
    rng = random.Random(seed)
    orch = Orchestrator(max_workers=8, replay_size=2_000_000)
    snapshots: list[dict] = []

    def child(ctx, depth, fail_until):
        if ctx.attempt <= fail_until:
            raise RuntimeError("transient")
        if depth < 3:
            for _ in range(random.randint(0, 2)):
                ctx.spawn(child, depth + 1, random.choice([0, 0, 1, 5]), retries=random.randint(0, 2))
        ctx.log(random.choice(["debug", "info", "warning", "error"]), f"depth {depth}")

    def handler(ctx):
        def agent_thread():  # another thread links children by step_id while the step runs
            for _ in range(40):
                ctx.orchestrator.spawn(child, 2, random.choice([0, 1]), step_id=ctx.step_id, retries=1)

        threads = [threading.Thread(target=agent_thread) for _ in range(3)]
        for t in threads:
            t.start()
        for _ in range(60):
            ctx.spawn(child, 0, random.choice([0, 0, 1, 9]), retries=random.randint(0, 2))
        for t in threads:
            t.join()

    orch.define("d", [Step("one", handler), Step("two", handler), Step("three", handler)])
    job = orch.start("d")
    done = threading.Event()

    def snapshotter():
        while not done.is_set():
            snapshots.append(orch.snapshot(job))
            threading.Event().wait(rng.uniform(0.001, 0.02))  # spread snapshots over the run

    watcher = threading.Thread(target=snapshotter)
    watcher.start()
    final = orch.wait(job, TIMEOUT)
    done.set()
    watcher.join()
    orch.shutdown()
    assert final["job"]["status"] == "completed"
    assert all(s["status"] == "completed" for s in final["job"]["steps"])
    assert final["job"]["progress"]["total"] >= 3 * 180
    check_history(orch.store, job, snapshots)


def test_events_that_left_the_ring_are_reported_gone():
    store = MemoryStore(replay_size=16)
    manager, [first] = store.create_manager("d", ["a"], {})
    for n in range(40):
        store.log(first.id, "info", f"{n}")
    with pytest.raises(Gone):
        store.events_after(0)
    with pytest.raises(Gone):
        store.events_after(store.seq + 5)  # from the future (another run)
    recent, last = store.events_after(store.seq - 16)
    assert [e.seq for e in recent] == list(range(store.seq - 15, store.seq + 1)) and last == store.seq


def noop(ctx):
    pass


class StoreMachine(RuleBasedStateMachine):
    """Random single-threaded schedules of every store operation; invariants after each."""

    def __init__(self) -> None:
        super().__init__()
        self.store = self.make_store()
        self.manager, [self.first] = self.store.create_manager("d", ["a", "b", "c"], {})
        self.snapshots = [self.store.snapshot(self.manager.id)]

    def make_store(self) -> MemoryStore:
        return MemoryStore(replay_size=1_000_000)

    def current(self):
        return self.manager.steps[self.manager.current]

    def jobs(self, status):
        return [c for c in self.manager.children if c.status == status]

    @precondition(lambda self: self.current().status == "running" and not self.manager.cancelled)
    @rule(by_step=st.booleans(), retries=st.integers(0, 2), data=st.data())
    def spawn(self, by_step, retries, data):
        step = self.current()
        inside = [c for c in self.manager.children if c.step is step]
        if by_step or not inside:
            self.store.add_child(noop, (), {}, retries, step_id=step.id)[0]
        else:
            parent = data.draw(st.sampled_from(inside))
            self.store.add_child(noop, (), {}, retries, parent_id=parent.id)[0]

    @precondition(lambda self: self.jobs("pending"))
    @rule(data=st.data())
    def begin(self, data):
        self.store.begin_child(data.draw(st.sampled_from(self.jobs("pending"))))

    @precondition(lambda self: self.jobs("running"))
    @rule(data=st.data(), fail=st.booleans())
    def end(self, data, fail):
        child = data.draw(st.sampled_from(self.jobs("running")))
        self.store.end_child(child, "RuntimeError: x" if fail else None)

    @precondition(lambda self: self.current().status == "running" and not self.current().handler_returned)
    @rule(fail=st.booleans())
    def handler_returns(self, fail):
        self.store.handler_returned(self.current(), "ValueError: y" if fail else None)

    @precondition(lambda self: self.manager.status == "running")
    @rule()
    def cancel(self):
        self.store.cancel(self.manager.id)

    @rule(level=st.sampled_from(["debug", "info", "warning", "error"]))
    def log(self, level):
        self.store.log(self.current().id, level, "line")

    @rule()
    def snapshot(self):
        self.snapshots.append(self.store.snapshot(self.manager.id))

    @invariant()
    def counts_add_up(self):
        job = self.store.snapshot(self.manager.id)["job"]
        check_progress(job["progress"])
        for step in job["steps"]:
            check_progress(step["progress"])
        for key in job["progress"]:
            assert job["progress"][key] == sum(s["progress"][key] for s in job["steps"])
        running = [s for s in job["steps"] if s["status"] == "running"]
        assert len(running) <= 1
        if self.manager.settled:
            assert all(s["status"] in TERMINAL for s in job["steps"])
            assert not self.jobs("pending") and not self.jobs("running")

    def teardown(self):
        check_history(self.store, self.manager.id, self.snapshots)


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


def test_the_work_a_change_returns_is_its_own_and_a_later_change_does_not_add_to_it():
    """Each change hands its caller the work it made runnable, to start outside the lock. A change
    that made nothing runnable must hand an empty list of its own: it used to hand the store's
    live one, to which the next change added the next step's handler, so two threads started that
    handler and the step's children were spawned twice (a 3-step job of 60,000 no-op children on
    2 threads: one run in ten counted 80,000)."""
    store = MemoryStore()
    manager, _ = store.create_manager("two", ["a", "b"], {})
    first, second = manager.steps
    kids = [store.add_child(print, (), {}, 0, step_id=first.id)[0] for _ in range(2)]
    for kid in kids:
        assert store.begin_child(kid)
    returned = store.handler_returned(first, None)  # its children still run: nothing to start
    ended_one = store.end_child(kids[0], None)  # one still runs: nothing to start
    ended_last = store.end_child(kids[1], None)  # the step is done: the next one's handler
    assert ended_last == [second]
    assert returned == [] and ended_one == []


def fetch(url, depth=1):
    pass


@pytest.mark.parametrize("journaled", [False, True])
def test_a_settled_managers_children_read_back_exactly_as_before_they_were_kept_compactly(tmp_path, journaled):
    """Once a manager settles its children are kept compactly (`FinishedChildren`): every read of
    them (listing with paging and filters, a child's snapshot and logs, spawning under one) is the
    same as from the `Job` objects they were; with a journal, so is what was written of them."""
    journal = SqliteJournal(tmp_path / "c.db") if journaled else None
    store = MemoryStore(replay_size=1_000, max_finished=1, journal=journal)
    manager, [first] = store.create_manager("d", ["a", "b"], {"n": 1})
    spawn = lambda fn, *args, step, parent=None, retries=0, **kwargs: store.add_child(  # noqa: E731
        fn, args, kwargs, retries, step_id=None if parent else step.id, parent_id=parent)[0]
    plain = spawn(fetch, "https://a.example/x", step=first, depth=2)
    failing = spawn(fetch, 1, step=first)
    retried = spawn(noop, step=first, retries=2)
    nested = spawn(fetch, [1, 2], step=first, parent=plain.id)
    for child in (plain, failing, retried, nested):
        store.begin_child(child)
    store.log(plain.id, "info", "a line of plain")
    store.end_child(plain, None)
    store.end_child(failing, "ValueError: bad 7", "Traceback (most recent call last):\n  ...")
    store.end_child(retried, "OSError: flaky")
    store.begin_child(retried)
    store.end_child(retried, None)
    store.end_child(nested, None)
    store.handler_returned(first, None)
    second = manager.steps[1]
    running = spawn(noop, step=second)
    spawn(fetch, "later", step=second)  # still pending when the manager is cancelled
    store.begin_child(running)
    store.cancel(manager.id)  # the pending child is cancelled before it began (no started_at)
    kept = list(manager.children)
    logs_before = {c.id: store.logs(c.id)["logs"] for c in kept}
    store.end_child(running, None)
    store.handler_returned(second, None)  # the manager settles
    assert manager.settled and isinstance(manager.children, FinishedChildren)
    before = [wire.child_json(c) for c in kept]  # the Job objects, as they were when it settled
    assert [c["attempts"] for c in before if c["attempts"]] == [[{"attempt": 1, "error": "OSError: flaky"}]]
    assert sum(c["started_at"] is None for c in before) == 1

    def listing(job_id=manager.id, **query):
        return store.children(job_id, **query)

    assert listing(limit=100) == {"children": before, "next": None}
    for step in (None, "a", "b"):
        for status in (None, "completed", "failed", "cancelled", "running"):
            chosen = [(p, c) for p, c in enumerate(before)
                      if (step is None or c["step_name"] == step) and (status is None or c["status"] == status)]
            for limit in (1, 2, 100):
                for cursor in range(len(before) + 1):
                    rest = [(p, c) for p, c in chosen if p >= cursor]
                    expected = {"children": [c for _, c in rest[:limit]],
                                "next": rest[limit][0] if len(rest) > limit else None}
                    assert listing(step=step, status=status, limit=limit, cursor=cursor) == expected
    assert listing(first.id, limit=100)["children"] == before[:4]
    for child, json in zip(kept, before, strict=True):
        assert store.snapshot(child.id)["job"] == json
        assert wire.child_json(store.get(child.id)) == json
        assert store.logs(child.id)["logs"] == logs_before[child.id]
    with pytest.raises(Conflict):
        store.add_child(noop, (), {}, 0, parent_id=nested.id)
    store.log(failing.id, "warning", "late")  # code let go of may still write
    assert store.logs(failing.id)["logs"][-1]["message"] == "late"
    if journaled:  # another job settles: this one leaves memory, and is read from the journal
        other, [step] = store.create_manager("d", ["a"], {})
        store.handler_returned(step, None)
        assert store.wait_visible(store.seq)
        deadline = time.monotonic() + 10
        while manager.id in store._managers and time.monotonic() < deadline:
            time.sleep(0.01)
        assert manager.id not in store._managers
        assert listing(limit=100) == {"children": before, "next": None}
        assert store.snapshot(failing.id)["job"] == before[1]
        store.close()


def test_finished_children_are_found_by_id_whatever_the_order_of_their_ids():
    store = MemoryStore()
    manager, [step] = store.create_manager("d", ["a"], {})
    for n in range(5):
        child = store.add_child(fetch, (n,), {}, 0, step_id=step.id)[0]
        store.begin_child(child)
        store.end_child(child, None if n % 2 else f"ValueError: {n}")
    children = list(reversed(manager.children))
    finished = FinishedChildren(manager, children)
    for position, child in enumerate(children):
        assert wire.child_json(finished.find(child.id)) == wire.child_json(child)
        assert finished[position].id == child.id == finished[position - len(children)].id
    assert finished.sorted is False
    with pytest.raises(KeyError):
        finished.find("c_nope")
    assert FinishedChildren(manager, children[::-1]).find(children[2].id).id == children[2].id
    assert list(finished.positions(None, "failed", 0)) == [p for p, c in enumerate(children) if c.status == "failed"]


def test_an_event_read_later_says_what_its_own_change_did():
    """Progress events' and a child's status events' data is made when first read; read after
    later changes, each still says the counts, or the child, as they were when it was emitted."""
    store = MemoryStore()
    manager, _ = store.create_manager("one", ["a"], {})
    step = manager.steps[0]
    kid = store.add_child(print, (), {}, 0, step_id=step.id)[0]
    store.begin_child(kid)
    store.end_child(kid, None)
    store.handler_returned(step, None)
    seen = [(e.type, e.data["progress"]["pending"], e.data["progress"]["running"], e.data["progress"]["completed"])
            for e in all_events(store) if e.type in ("step_progress", "job_progress")]
    assert seen[-6:-2] == [("step_progress", 0, 1, 0), ("job_progress", 0, 1, 0),
                           ("step_progress", 0, 0, 1), ("job_progress", 0, 0, 1)]
    assert ("step_progress", 1, 0, 0) in seen  # the spawn's
    statuses = [(e.data["status"], e.data["started_at"] is not None, e.data["finished_at"] is not None)
                for e in all_events(store) if e.type == "job_status" and e.data["job_id"] == kid.id]
    assert statuses == [("pending", False, False), ("running", True, False), ("completed", True, True)]
    assert all(e.data["seq"] == e.seq for e in all_events(store))
