"""The status rules, linkage styles, retries, cancel and bad use, through the Python API."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from stepstream import Conflict, NotFound, Orchestrator, Step
from tests.folding import check_progress

TIMEOUT = 20


@pytest.fixture
def orch():
    o = Orchestrator(max_workers=4)
    yield o
    o.shutdown()


def steps_of(snap: dict) -> dict[str, dict]:
    return {s["name"]: s for s in snap["job"]["steps"]}


def noop(ctx, *args, **kwargs):
    pass


def boom(ctx, *args):
    raise RuntimeError("boom")


def test_step_whose_children_all_fail_fails_and_later_steps_are_skipped(orch):
    orch.define("d", [Step("a", lambda ctx: [ctx.spawn(boom, i) for i in range(3)]), Step("b", noop), Step("c", noop)])
    snap = orch.wait(orch.start("d"), TIMEOUT)
    steps = steps_of(snap)
    assert snap["job"]["status"] == "failed"
    assert steps["a"]["status"] == "failed"
    assert steps["a"]["progress"] == {"total": 3, "pending": 0, "running": 0, "completed": 0, "failed": 3,
                                      "cancelled": 0}
    assert steps["a"]["error"] == "all 3 children failed"
    assert [steps["b"]["status"], steps["c"]["status"]] == ["skipped", "skipped"]
    assert "step 'a' failed" in snap["job"]["error"]


def test_step_with_some_failed_children_completes_and_counts_show_them(orch):
    def handler(ctx):
        ctx.spawn(boom, 0)
        for i in range(4):
            ctx.spawn(noop, i)

    orch.define("d", [Step("a", handler), Step("b", noop)])
    snap = orch.wait(orch.start("d"), TIMEOUT)
    a = steps_of(snap)["a"]
    assert snap["job"]["status"] == "completed"
    assert a["status"] == "completed"
    assert a["progress"]["failed"] == 1 and a["progress"]["completed"] == 4 and a["progress"]["total"] == 5
    assert snap["job"]["progress"] == a["progress"]  # the manager sums its steps


def test_step_that_spawns_nothing_completes_when_handler_returns(orch):
    orch.define("d", [Step("only", noop)])
    snap = orch.wait(orch.start("d"), TIMEOUT)
    only = steps_of(snap)["only"]
    assert only["status"] == "completed"
    assert only["progress"]["total"] == 0
    assert snap["job"]["status"] == "completed"


def test_handler_raising_fails_the_step_even_after_children_complete(orch):
    def handler(ctx):
        ctx.spawn(noop)
        raise ValueError("bad input")

    orch.define("d", [Step("a", handler), Step("b", noop)])
    snap = orch.wait(orch.start("d"), TIMEOUT)
    steps = steps_of(snap)
    assert steps["a"]["status"] == "failed"
    assert steps["a"]["error"] == "ValueError: bad input"
    assert steps["a"]["progress"]["completed"] == 1
    assert steps["b"]["status"] == "skipped"
    assert snap["job"]["status"] == "failed"


def test_next_step_starts_only_after_previous_is_terminal(orch):
    release = threading.Event()
    child_running = threading.Event()
    seen_by_b = {}

    def gated(ctx):
        child_running.set()
        release.wait(TIMEOUT)

    def b(ctx):
        seen_by_b.update(steps_of(ctx.orchestrator.snapshot(ctx.manager_id)))

    orch.define("d", [Step("a", lambda ctx: ctx.spawn(gated)), Step("b", b)])
    job = orch.start("d")
    assert child_running.wait(TIMEOUT)
    held = steps_of(orch.snapshot(job))
    assert held["a"]["status"] == "running"  # handler returned, but a child still runs
    assert held["b"]["status"] == "pending"
    release.set()
    orch.wait(job, TIMEOUT)
    assert seen_by_b["a"]["status"] == "completed"
    assert seen_by_b["b"]["status"] == "running"


def test_cancel_mid_run_leaves_every_job_terminal(orch):
    started = threading.Barrier(3)  # two running children and the test
    saw_cancel = []

    def worker(ctx):
        started.wait(TIMEOUT)
        while not ctx.cancelled:
            threading.Event().wait(0.005)  # cooperative work loop polling ctx.cancelled
        saw_cancel.append(ctx.job_id)

    def handler(ctx):
        for _ in range(10):
            ctx.spawn(worker)

    o = Orchestrator(max_workers=2)
    try:
        o.define("d", [Step("a", handler), Step("b", noop)])
        job = o.start("d")
        started.wait(TIMEOUT)
        snap = o.cancel(job)
        assert snap["job"]["status"] == "cancelled"
        final = o.wait(job, TIMEOUT)
        steps = steps_of(final)
        assert steps["a"]["status"] == "cancelled"
        assert steps["a"]["progress"] == {"total": 10, "pending": 0, "running": 0, "completed": 0,
                                          "failed": 0, "cancelled": 10}
        assert steps["b"]["status"] == "skipped"
        assert len(saw_cancel) == 2
        children = o.store.children(job, limit=100)["children"]
        assert {c["status"] for c in children} == {"cancelled"}
        with pytest.raises(Conflict):
            o.spawn(noop, step_id=steps["a"]["id"])
    finally:
        o.shutdown()


def crawl(ctx, depth):
    if depth < 2:
        for _ in range(2):
            ctx.spawn(crawl, depth + 1)
    if depth == 2 and ctx.attempt == 1:
        raise OSError("flaky")


def agent_style(ctx):
    def spawn_tree(depth):
        ctx.orchestrator.spawn(agent_leaf, depth, step_id=ctx.step_id)
        if depth < 2:
            for _ in range(2):
                spawn_tree(depth + 1)

    spawn_tree(0)


def agent_leaf(ctx, depth):
    if depth == 2 and ctx.attempt == 1:
        raise OSError("flaky")


def test_crawler_and_agent_style_children_of_the_same_shape_count_the_same(orch):
    orch.define("crawler", [Step("s", lambda ctx: ctx.spawn(crawl, 0))])
    orch.define("agent", [Step("s", agent_style)])
    crawler = steps_of(orch.wait(orch.start("crawler"), TIMEOUT))["s"]
    agent = steps_of(orch.wait(orch.start("agent"), TIMEOUT))["s"]
    assert crawler["progress"] == agent["progress"]
    assert crawler["progress"] == {"total": 7, "pending": 0, "running": 0, "completed": 3, "failed": 4, "cancelled": 0}


def test_children_linked_by_parent_id_at_any_depth_count_in_their_step(orch):
    gate = threading.Event()
    ids = {}

    def deep(ctx, level):
        ids.setdefault(level, ctx.job_id)
        if level < 4:
            ctx.orchestrator.spawn(deep, level + 1, parent_id=ctx.job_id)
        gate.wait(TIMEOUT)

    orch.define("d", [Step("first", lambda ctx: ctx.spawn(deep, 0)), Step("second", noop)])
    job = orch.start("d")
    gate.set()
    snap = orch.wait(job, TIMEOUT)
    steps = steps_of(snap)
    assert steps["first"]["progress"]["completed"] == 5
    assert steps["second"]["progress"]["total"] == 0
    child = orch.snapshot(ids[4])["job"]
    assert child["step_name"] == "first" and child["parent_id"] == ids[3] and child["manager_id"] == job


def test_retries_count_only_the_last_attempt(orch):
    attempts = []

    def flaky(ctx, fail_times):
        attempts.append(ctx.attempt)
        if ctx.attempt <= fail_times:
            raise RuntimeError(f"attempt {ctx.attempt}")

    def handler(ctx):
        ctx.spawn(flaky, 2, retries=2)  # fails twice, then succeeds
        ctx.spawn(flaky, 5, retries=1)  # fails both attempts

    orch.define("d", [Step("a", handler)])
    job = orch.start("d")
    snap = orch.wait(job, TIMEOUT)
    assert steps_of(snap)["a"]["progress"] == {"total": 2, "pending": 0, "running": 0, "completed": 1,
                                               "failed": 1, "cancelled": 0}
    assert sorted(attempts) == [1, 1, 2, 2, 3]
    children = {c["attempt"]: c for c in orch.store.children(job)["children"]}
    assert children[3]["status"] == "completed"
    assert children[2]["status"] == "failed" and children[2]["error"] == "RuntimeError: attempt 2"
    warnings = orch.logs(job, level="warning")["logs"]
    assert any("retrying" in line["message"] for line in warnings)


def test_async_children_and_handlers_run_on_the_event_loop(orch):
    async def agent(ctx, n):
        await asyncio.sleep(0)
        ctx.log("info", f"agent {n}")
        if n == 0:
            raise ValueError("no answer")

    async def handler(ctx):
        for n in range(5):
            ctx.spawn(agent, n)

    orch.define("d", [Step("a", handler)])
    job = orch.start("d")
    snap = orch.wait(job, TIMEOUT)
    assert steps_of(snap)["a"]["progress"]["completed"] == 4
    assert steps_of(snap)["a"]["progress"]["failed"] == 1
    assert {r["message"] for r in orch.logs(job, level="info")["logs"]} >= {f"agent {n}" for n in range(5)}


def test_logs_are_stored_under_the_job_that_wrote_them(orch):
    def child(ctx, n):
        ctx.log("debug", f"child {n} debug")
        logging.getLogger("some.library").warning("child %d via logging", n)

    def handler(ctx):
        ctx.log("info", "handler line")
        for n in range(3):
            ctx.spawn(child, n)

    orch.define("d", [Step("a", handler), Step("b", lambda ctx: ctx.log("error", "b line"))])
    job = orch.start("d")
    snap = orch.wait(job, TIMEOUT)
    steps = steps_of(snap)
    for name, step in steps.items():
        lines = orch.logs(job, step=name, limit=10_000)["logs"]
        assert len(lines) == step["log_count"]
        assert all(line["step_name"] == name and line["step_id"] == step["id"] for line in lines)
        assert all(line["manager_id"] == job and line["job_id"] for line in lines)
    a_lines = orch.logs(job, step="a")["logs"]
    via_logging = [line for line in a_lines if "via logging" in line["message"]]
    assert len(via_logging) == 3 and all(line["level"] == "warning" for line in via_logging)
    assert {line["job_id"] for line in via_logging}.isdisjoint({steps["a"]["id"]})
    one_child = via_logging[0]["job_id"]
    assert {line["job_id"] for line in orch.logs(one_child)["logs"]} == {one_child}
    everything = orch.logs(job, limit=10_000)["logs"]
    assert len(everything) == snap["job"]["log_count"]
    assert [line["seq"] for line in everything] == sorted(line["seq"] for line in everything)
    assert all(line["level"] in ("warning", "error") for line in orch.logs(job, level="warning")["logs"])


def test_log_pages_follow_the_after_cursor(orch):
    orch.define("d", [Step("a", lambda ctx: [ctx.log("info", f"line {n}") for n in range(25)])])
    job = orch.start("d")
    orch.wait(job, TIMEOUT)
    seen, after = [], 0
    while True:
        page = orch.logs(job, step="a", after=after, limit=10)
        seen += page["logs"]
        if page["next"] is None:
            break
        after = page["next"]
    assert [line["message"] for line in seen if line["message"].startswith("line")] == [f"line {n}" for n in range(25)]
    assert len(seen) == len({line["seq"] for line in seen})
    # backwards from the newest: the tail first, then earlier pages, each ascending
    tail = orch.logs(job, step="a", before=10**9, limit=10)
    assert tail["logs"] == seen[-10:]
    back, before = [], 10**9
    while before is not None:
        page = orch.logs(job, before=before, limit=7)
        back = page["logs"] + back
        before = page["next"]
    assert back == orch.logs(job, limit=1000)["logs"]


def test_bad_use_raises_clear_errors_and_changes_nothing(orch):
    orch.define("d", [Step("a", noop)])
    job = orch.wait(orch.start("d"), TIMEOUT)["job"]
    seq = orch.store.seq
    with pytest.raises(NotFound, match="no definition named 'nope'"):
        orch.start("nope")
    with pytest.raises(ValueError, match="repeats step names: x"):
        orch.define("dup", [Step("x", noop), Step("x", noop)])
    with pytest.raises(ValueError, match="already defined"):
        orch.define("d", [Step("a", noop)])
    with pytest.raises(NotFound, match="no job with id 'missing'"):
        orch.snapshot("missing")
    with pytest.raises(NotFound):
        orch.cancel("missing")
    with pytest.raises(Conflict, match="completed; it takes no new children"):
        orch.spawn(noop, step_id=job["steps"][0]["id"])
    with pytest.raises(Conflict, match="already completed"):
        orch.cancel(job["id"])
    with pytest.raises(ValueError, match="JSON"):
        orch.start("d", params={"x": object()})
    with pytest.raises(ValueError, match="exactly one"):
        orch.spawn(noop)
    with pytest.raises(ValueError, match="unknown log level"):
        orch.logs(job["id"], level="loud")
    assert "dup" not in orch.definitions()
    assert orch.store.seq == seq
    assert orch.snapshot(job["id"])["job"] == job


def test_finished_jobs_beyond_the_retention_limit_are_evicted():
    o = Orchestrator(max_workers=2, max_finished=2)
    try:
        o.define("d", [Step("a", lambda ctx: [ctx.spawn(noop) for _ in range(3)])])
        jobs = []
        for _ in range(3):  # one after another, so the first one is the oldest finished
            jobs.append(o.start("d"))
            o.wait(jobs[-1], TIMEOUT)
        alive = [j for j in jobs if j in {m["id"] for m in o.store.list_managers()["jobs"]}]
        assert alive == jobs[1:]
        gone = jobs[0]
        with pytest.raises(NotFound):
            o.snapshot(gone)
        assert len(o.store._jobs) == 2 * (1 + 1 + 3)
    finally:
        o.shutdown()


def test_log_storage_per_step_is_bounded_but_counts_stay_exact():
    o = Orchestrator(max_workers=2, max_logs_per_step=100)
    try:
        o.define("d", [Step("a", lambda ctx: [ctx.log("info", f"{n}") for n in range(1000)])])
        job = o.start("d")
        step = steps_of(o.wait(job, TIMEOUT))["a"]
        kept = o.logs(job, step="a", limit=10_000)["logs"]
        assert step["log_count"] == 1002  # 1000 lines + "started" + "completed"
        assert 100 <= len(kept) <= 125
        assert kept[-1]["message"].startswith("step a completed")
    finally:
        o.shutdown()


def test_progress_invariant_holds_in_every_snapshot_while_running(orch):
    stop = threading.Event()
    bad = []

    def watch(job):
        while not stop.is_set():
            snap = orch.snapshot(job)["job"]
            try:
                check_progress(snap["progress"])
                for step in snap["steps"]:
                    check_progress(step["progress"])
                assert snap["progress"]["total"] == sum(s["progress"]["total"] for s in snap["steps"])
            except AssertionError as exc:
                bad.append(exc)

    def handler(ctx):
        for n in range(300):
            ctx.spawn(boom if n % 7 == 0 else noop, n)

    orch.define("d", [Step("a", handler), Step("b", handler)])
    job = orch.start("d")
    watcher = threading.Thread(target=watch, args=(job,))
    watcher.start()
    orch.wait(job, TIMEOUT)
    stop.set()
    watcher.join()
    assert not bad


def test_logging_from_code_run_inside_a_store_change_does_not_deadlock(orch):
    # e.g. a garbage-collector finaliser that logs while a job's thread holds the store's lock
    class Chatty:
        @property
        def __name__(self):  # read by the store while it adds the child, under its lock
            logging.getLogger("finaliser").warning("logged while the store was busy")
            return "chatty"

        def __call__(self, ctx):
            pass

    orch.define("d", [Step("a", lambda ctx: ctx.spawn(Chatty()))])
    job = orch.start("d")
    snap = orch.wait(job, 10)
    assert steps_of(snap)["a"]["progress"]["completed"] == 1
    lines = [line["message"] for line in orch.logs(job, step="a")["logs"]]
    assert "logged while the store was busy" in lines
    assert len(orch.logs(job, step="a")["logs"]) == steps_of(snap)["a"]["log_count"]


def test_errors_outside_jobs_still_reach_stderr_when_the_app_configured_no_logging():
    """The logging bridge sits on the root logger; without it Python prints warnings and errors
    to stderr (lastResort). It must not silence them, e.g. a server's 500 traceback."""
    import subprocess
    import sys

    code = ("import logging\nfrom stepstream import Orchestrator\nOrchestrator(max_workers=1)\n"
            "logging.getLogger('stepstream.server').error('a traceback for the operator')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "a traceback for the operator" in done.stderr
