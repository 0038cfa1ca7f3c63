"""What only the in-memory orchestrator does: retention of finished jobs, bounded log storage, the
store's lock, the logging bridge. The behaviour every storage mode shares (status rules, retries,
cancel, listings, logs, ...) is tested on all of them in tests/test_behaviour.py."""

from __future__ import annotations

import logging

import pytest

from stepstream import NotFound, Orchestrator, Step

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
