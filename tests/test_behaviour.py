"""What a user sees through the Python API, on every storage mode (in memory, SQLite and Redis)
and on the Celery runner.

Every test takes `backend_orch` (or `backend`, to make its own), parametrised over the three
modes and Celery (see tests/backends.py), and runs the jobs of tests/behaviour_jobs.py: a job's params say
what its steps and children do, so the same job runs on a Redis worker as in this process.
"""

from __future__ import annotations

import json
import re
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.processes import until
from stepstream import Conflict, NotFound, Step
from stepstream.model import LEVELS, TERMINAL, InvalidRequest
from stepstream.text import MAX_LOG_CHARS, bounded, describe, safe_str
from tests.backends import assert_folds, check_counts, events_until
from tests.behaviour_jobs import ODD_ERROR, ODD_LINE, child, gate, plan, planned_child, step

pytestmark = pytest.mark.timeout(120)

TIMEOUT = 30
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
ALL_FAILED = {"total": 3, "pending": 0, "running": 0, "completed": 0, "failed": 3, "cancelled": 0}


def steps_of(snap: dict) -> dict[str, dict]:
    return {s["name"]: s for s in snap["job"]["steps"]}


def progress(total: int = 0, *, completed: int = 0, failed: int = 0, cancelled: int = 0, pending: int = 0,
             running: int = 0) -> dict:
    return {"total": total, "pending": pending, "running": running, "completed": completed, "failed": failed,
            "cancelled": cancelled}


def all_children(orch, job_id: str, limit: int = 100, **query) -> list[dict]:
    found, cursor = [], 0
    while cursor is not None:
        page = orch.children(job_id, cursor=cursor, limit=limit, **query)
        found += page["children"]
        cursor = page["next"]
    return found


def all_logs(orch, job_id: str, **query) -> list[dict]:
    return orch.logs(job_id, limit=100_000, **query)["logs"]


def ended(orch, backend, job_id: str) -> dict:
    """The job's final snapshot (`wait`), then read again once a newer job has ended too, as a user
    reads an older job (SQLite: from the database, memory having let go of it): its snapshot,
    children and logs read the same before and after."""
    final = orch.wait(job_id, TIMEOUT)
    children, logs = all_children(orch, job_id), all_logs(orch, job_id)
    orch.wait(orch.start("a", plan(backend.token)), TIMEOUT)
    assert orch.snapshot(job_id)["job"] == final["job"]
    assert all_children(orch, job_id) == children
    assert all_logs(orch, job_id) == logs
    check_finished(final["job"])
    for kid in children:
        assert kid["status"] in TERMINAL and ISO.fullmatch(kid["finished_at"]), kid
        assert kid["created_at"] <= (kid["started_at"] or kid["finished_at"]) <= kid["finished_at"], kid
        assert kid["started_at"] is not None or kid["status"] == "cancelled", kid  # only a cancel ends one unbegun
    return final


def check_finished(job: dict) -> None:
    """A finished manager's snapshot: counts add up, every step is terminal, and the times of each
    job are set and in order."""
    check_counts(job)
    assert job["status"] in TERMINAL and ISO.fullmatch(job["created_at"])
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    for one in job["steps"]:
        assert one["status"] in TERMINAL and one["finished_at"], one
        if one["status"] == "skipped":
            assert one["started_at"] is None
        else:
            assert job["started_at"] <= one["started_at"] <= one["finished_at"], one
        assert one["finished_at"] <= job["finished_at"], one  # a job ends with its last step, cancelled too


def known_difference(request, backend, kind: str, reason: str) -> None:
    """This test fails on backend `kind` for `reason` (a bug to fix there): expected, strictly."""
    if backend.kind == kind:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


class Watcher:
    """Takes snapshots of a job, one after the other on a thread, until stopped."""

    def __init__(self, orch, job_id: str) -> None:
        self.orch, self.job_id = orch, job_id
        self.snapshots: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.snapshots.append(self.orch.snapshot(self.job_id))

    def stop(self) -> list[dict]:
        self._stop.set()
        self._thread.join(TIMEOUT)
        return self.snapshots


# ---------------------------------------------------------------- the status rules


def test_a_step_whose_children_all_fail_fails_the_job_and_skips_the_later_steps(backend_orch, backend):
    orch = backend_orch
    job = orch.start("abc", plan(backend.token, a=step(child(fail=1), child(fail=1), child(fail=1))))
    snap = ended(orch, backend, job)
    steps = steps_of(snap)
    assert snap["job"]["status"] == "failed"
    assert steps["a"]["status"] == "failed"
    assert steps["a"]["progress"] == ALL_FAILED
    assert steps["a"]["error"] == "all 3 children failed"
    assert [steps["b"]["status"], steps["c"]["status"]] == ["skipped", "skipped"]
    assert steps["b"]["progress"] == steps["c"]["progress"] == progress()
    assert snap["job"]["error"] == "step 'a' failed: all 3 children failed"
    assert snap["job"]["progress"] == ALL_FAILED
    check_counts(snap["job"])


def test_a_step_with_some_failed_children_completes_and_its_counts_show_them(backend_orch, backend):
    orch = backend_orch
    job = orch.start("ab", plan(backend.token, a=step(child(fail=1), *[child()] * 4)))
    snap = ended(orch, backend, job)
    steps = steps_of(snap)
    assert snap["job"]["status"] == "completed" and snap["job"]["error"] is None
    assert steps["a"]["status"] == "completed" and steps["a"]["error"] is None
    assert steps["a"]["progress"] == progress(5, completed=4, failed=1)
    assert steps["b"]["status"] == "completed" and steps["b"]["progress"] == progress()
    assert snap["job"]["progress"] == steps["a"]["progress"]  # the manager sums its steps


def test_a_step_that_spawns_nothing_completes_when_its_handler_returns(backend_orch, backend):
    orch = backend_orch
    snap = ended(orch, backend, orch.start("ab", plan(backend.token)))
    assert snap["job"]["status"] == "completed"
    for name, only in steps_of(snap).items():
        assert only["status"] == "completed", name
        assert only["progress"] == progress()
        assert only["started_at"] and only["finished_at"]


def test_a_raising_handler_fails_its_step_even_after_its_children_complete(backend_orch, backend):
    orch = backend_orch
    job = orch.start("ab", plan(backend.token, a=step(child(), raises="bad input")))
    snap = ended(orch, backend, job)
    steps = steps_of(snap)
    assert steps["a"]["status"] == "failed"
    assert steps["a"]["error"] == "ValueError: bad input"
    assert "ValueError: bad input" in steps["a"]["traceback"]
    assert steps["a"]["progress"] == progress(1, completed=1)
    assert steps["b"]["status"] == "skipped"
    assert snap["job"]["status"] == "failed"
    assert snap["job"]["error"] == "step 'a' failed: ValueError: bad input"
    errors = [line["message"] for line in all_logs(orch, job, step="a", level="error")]
    assert any(m.startswith("step a handler raised ValueError: bad input") for m in errors), errors


def test_the_next_step_starts_only_once_the_previous_one_is_terminal(backend_orch, backend):
    orch = backend_orch
    job = orch.start("ab", plan(backend.token, a=step(child(hold="child")), b=step(observe=True)))
    until(lambda: steps_of(orch.snapshot(job))["a"]["progress"]["running"] == 1, what="the child running")
    held = steps_of(orch.snapshot(job))
    assert held["a"]["status"] == "running"  # its handler returned, but a child still runs
    assert held["b"]["status"] == "pending"
    gate(backend.token, "child").set()
    snap = ended(orch, backend, job)
    assert snap["job"]["status"] == "completed"
    seen = [line["message"] for line in all_logs(orch, job, step="b") if line["message"].startswith("saw ")]
    assert seen == ["saw a completed, b running"]  # what step b's handler read when it ran


# ---------------------------------------------------------------- retries


def test_a_retried_child_counts_only_its_last_attempt(backend_orch, backend):
    orch = backend_orch
    job = orch.start("a", plan(backend.token, a=step(
        child(fail=2, retries=2),  # fails twice, then succeeds
        child(fail=5, retries=1),  # fails both of its attempts
    )))
    snap = ended(orch, backend, job)
    assert steps_of(snap)["a"]["progress"] == progress(2, completed=1, failed=1)
    assert snap["job"]["status"] == "completed"
    attempts = sorted(line["message"] for line in all_logs(orch, job) if line["message"].startswith("attempt "))
    assert attempts == ["attempt 1", "attempt 1", "attempt 2", "attempt 2", "attempt 3"]
    children = {c["attempt"]: c for c in all_children(orch, job)}
    assert children[3]["status"] == "completed" and children[3]["retries"] == 2 and children[3]["error"] is None
    assert children[2]["status"] == "failed" and children[2]["retries"] == 1
    assert children[2]["error"] == "RuntimeError: attempt 2"
    retrying = sorted(line["message"] for line in all_logs(orch, job, level="warning") if "retrying" in line["message"])
    assert retrying == [
        "planned_child attempt 1 of 2 failed, retrying: RuntimeError: attempt 1",
        "planned_child attempt 1 of 3 failed, retrying: RuntimeError: attempt 1",
        "planned_child attempt 2 of 3 failed, retrying: RuntimeError: attempt 2",
    ]
    failed = [line for line in all_logs(orch, job, level="error") if line["job_id"] == children[2]["id"]]
    assert [line["message"].splitlines()[0] for line in failed] == ["planned_child failed: RuntimeError: attempt 2"]


def test_a_retried_child_keeps_the_error_of_each_earlier_attempt(backend_orch, backend):
    orch = backend_orch
    job = orch.start("a", plan(backend.token, a=step(child(fail=2, retries=2), child(fail=5, retries=1), child())))
    ended(orch, backend, job)  # read again from storage too: the same
    children = {c["attempt"]: c for c in all_children(orch, job)}
    assert children[3]["status"] == "completed" and children[3]["attempts"] == [
        {"attempt": 1, "error": "RuntimeError: attempt 1"}, {"attempt": 2, "error": "RuntimeError: attempt 2"}]
    assert children[2]["attempts"] == [{"attempt": 1, "error": "RuntimeError: attempt 1"}]  # its last is `error`
    assert children[1]["attempts"] == []
    assert orch.snapshot(children[3]["id"])["job"]["attempts"] == children[3]["attempts"]


def test_the_workers_say_how_many_there_are_and_how_many_are_busy(backend_orch, backend):
    orch = backend_orch
    if backend.kind == "celery":  # Celery's workers: their number and load are the broker's to tell
        assert orch.workers() is None
        return
    scope = "process" if backend.kind == "redis" else "deployment"  # Redis: only this process's are known
    assert orch.workers() == {"size": 4, "busy": 0, "scope": scope}
    job = orch.start("a", plan(backend.token, a=step(child(hold="kid"), child(hold="kid"))))
    until(lambda: steps_of(orch.snapshot(job))["a"]["progress"]["running"] == 2, what="two children running")
    # the step's own thread frees a moment after its children start: two busy, then, and only them
    until(lambda: orch.workers() == {"size": 4, "busy": 2, "scope": scope}, what="two workers busy")
    assert steps_of(orch.snapshot(job))["a"]["progress"]["running"] == 2
    gate(backend.token, "kid").set()
    orch.wait(job, TIMEOUT)
    until(lambda: orch.workers()["busy"] == 0, what="the workers free again")


# ---------------------------------------------------------------- cancel, rerun, delete


def test_cancel_mid_run_ends_every_job_and_running_children_see_it(backend):
    orch = backend.orchestrator(max_workers=2)
    job = orch.start("ab", plan(backend.token, a=step(*[child(until_cancel=True)] * 10)))
    until(lambda: orch.snapshot(job)["job"]["progress"]["running"] == 2, what="two children running")
    assert len(orch.children(job, status="running")["children"]) == 2
    assert len(orch.children(job, status="pending")["children"]) == 8
    snap = orch.cancel(job)
    assert snap["job"]["status"] == "cancelled"
    final = orch.wait(job, TIMEOUT)
    steps = steps_of(final)
    with pytest.raises(Conflict, match=f"^step 'a' of job {job} is cancelled; it takes no new children$"):
        orch.spawn(planned_child, child(), backend.token, step_id=steps["a"]["id"])
    assert ended(orch, backend, job)["job"] == final["job"]
    assert final["job"]["status"] == "cancelled"
    assert steps["a"]["status"] == "cancelled"
    assert steps["a"]["progress"] == progress(10, cancelled=10)  # 8 never began, 2 stopped
    assert steps["b"]["status"] == "skipped"
    children = all_children(orch, job)
    assert len(children) == 10 and {c["status"] for c in children} == {"cancelled"}
    saw = [line for line in all_logs(orch, job) if line["message"] == "saw cancel"]
    assert len(saw) == 2 and len({line["job_id"] for line in saw}) == 2
    with pytest.raises(Conflict, match="already cancelled"):
        orch.cancel(job)
    assert orch.snapshot(job)["job"] == final["job"]


def test_after_a_cancel_a_failing_child_is_not_retried_and_a_handler_cannot_spawn(backend_orch, backend):
    orch = backend_orch
    token = backend.token
    job = orch.start("abc", plan(token, a=step(child()), b=step(child(hold="kid", fail=1, retries=2), hold=True,
                                                                  spawn_after_hold=True)))
    until(lambda: steps_of(orch.snapshot(job))["b"]["progress"]["running"] == 1, what="step b's child running")
    cancelled = steps_of(orch.cancel(job))
    assert [cancelled[name]["status"] for name in "abc"] == ["completed", "running", "skipped"]
    gate(token, "kid").set()  # it fails now: no retry, its job was cancelled
    until(lambda: steps_of(orch.snapshot(job))["b"]["progress"]["cancelled"] == 1, what="the child cancelled")
    gate(token, "step b").set()
    final = ended(orch, backend, job)
    steps = steps_of(final)
    assert [steps[name]["status"] for name in "abc"] == ["completed", "cancelled", "skipped"]
    assert steps["a"]["progress"] == progress(1, completed=1)
    assert steps["b"]["progress"] == progress(1, cancelled=1)
    assert final["job"]["status"] == "cancelled" and final["job"]["error"] is None
    kid = all_children(orch, job, step="b")[0]
    assert (kid["status"], kid["attempt"], kid["error"]) == ("cancelled", 1, "RuntimeError: attempt 1")
    assert not [line for line in all_logs(orch, job) if "retrying" in line["message"]]
    said = [line["message"] for line in all_logs(orch, job, step="b")
            if line["message"].startswith(("refused", "spawned"))]
    assert said == [f"refused: Conflict: step 'b' of job {job} is cancelled; it takes no new children"]


def test_rerun_starts_a_new_job_of_the_same_definition_and_params_naming_the_original(backend_orch, backend):
    orch = backend_orch
    params = plan(backend.token, a=step(child(), child(fail=1)))
    first = orch.start("ab", params)
    done = ended(orch, backend, first)
    again = orch.rerun(first)
    assert again != first
    rerun = ended(orch, backend, again)["job"]
    assert rerun["rerun_of"] == first and done["job"]["rerun_of"] is None
    assert rerun["definition"] == "ab" and rerun["params"] == params == done["job"]["params"]
    assert rerun["progress"] == done["job"]["progress"] == progress(2, completed=1, failed=1)
    assert orch.snapshot(first)["job"] == done["job"]  # the original is untouched
    with pytest.raises(InvalidRequest):
        orch.rerun(done["job"]["steps"][0]["id"])
    with pytest.raises(NotFound):
        orch.rerun("m_missing")


def test_delete_removes_a_finished_job_and_refuses_one_still_running(backend_orch, backend):
    orch = backend_orch
    finished = orch.start("a", plan(backend.token, a=step(child(), child(log=["info", "kept?"]))))
    snap = ended(orch, backend, finished)
    step_id = snap["job"]["steps"][0]["id"]
    child_id = all_children(orch, finished)[0]["id"]
    newer = [j["id"] for j in orch.jobs()["jobs"] if j["id"] != finished]
    held = orch.start("ab", plan(backend.token, a=step(hold=True)))
    with pytest.raises(Conflict, match=f"^job {held} is still running; cancel it first$"):
        orch.delete(held)
    with pytest.raises(InvalidRequest, match=f"use its manager {finished}$"):
        orch.delete(step_id)
    with pytest.raises(InvalidRequest, match=f"use its manager {finished}$"):
        orch.delete(child_id)
    seq = orch.stats()["seq"]
    orch.delete(finished)
    for gone in (finished, step_id, child_id):
        with pytest.raises(NotFound, match=f"^no job with id '{gone}'$"):
            orch.snapshot(gone)
    with pytest.raises(NotFound):
        orch.children(finished)
    with pytest.raises(NotFound):
        orch.logs(finished)
    with pytest.raises(NotFound):
        orch.delete(finished)
    with pytest.raises(NotFound):
        orch.rerun(finished)
    assert [j["id"] for j in orch.jobs()["jobs"]] == [held, *newer]
    deleted = [data for type_, data in events_until(orch, seq, orch.stats()["seq"]) if type_ == "job_deleted"]
    assert [d["manager_id"] for d in deleted] == [finished]
    # cancelled, but its handler still runs: not deletable until the job has ended
    assert orch.cancel(held)["job"]["status"] == "cancelled"
    with pytest.raises(Conflict, match=f"^job {held} is still cancelled; cancel it first$"):
        orch.delete(held)
    gate(backend.token, "step a").set()
    assert orch.wait(held, TIMEOUT)["job"]["status"] == "cancelled"
    orch.delete(held)
    assert [j["id"] for j in orch.jobs()["jobs"]] == newer
    with pytest.raises(NotFound):
        orch.snapshot(held)


def test_deleting_a_step_or_a_child_is_refused_saying_its_kind_and_manager(backend_orch, backend, request):
    orch = backend_orch
    job = orch.start("a", plan(backend.token, a=step(child())))
    snap = ended(orch, backend, job)
    for wrong, kind in ((snap["job"]["steps"][0]["id"], "step"), (all_children(orch, job)[0]["id"], "child")):
        with pytest.raises(InvalidRequest, match=f"^job {wrong} is a {kind} job; use its manager {job}$"):
            orch.delete(wrong)
    assert orch.snapshot(job)["job"] == snap["job"]


def test_a_job_of_the_wrong_kind_is_refused_saying_which_to_use(backend_orch, backend):
    orch = backend_orch
    job = orch.start("ab", plan(backend.token, a=step(child()), b=step(child())))
    snap = ended(orch, backend, job)
    a_id, b_id = (s["id"] for s in snap["job"]["steps"])
    kid = all_children(orch, job, step="a")[0]["id"]
    for wrong, kind in ((a_id, "step"), (kid, "child")):
        with pytest.raises(InvalidRequest, match=f"^job {wrong} is a {kind} job; cancel its manager {job}$"):
            orch.cancel(wrong)
        with pytest.raises(InvalidRequest, match=f"^job {wrong} is a {kind} job; use its manager {job}$"):
            orch.rerun(wrong)
    with pytest.raises(InvalidRequest, match=f"^job {kid} is a child job; list children of its step or manager$"):
        orch.children(kid)
    with pytest.raises(InvalidRequest, match=f"^step 'b' is not job {a_id}'s step 'a'$"):
        orch.children(a_id, step="b")
    with pytest.raises(InvalidRequest, match=f"^job {kid} belongs to step 'a', not 'b'$"):
        orch.logs(kid, step="b")
    with pytest.raises(InvalidRequest, match=f"^job {a_id} belongs to step 'a', not 'b'$"):
        orch.logs(a_id, step="b")
    with pytest.raises(NotFound, match=f"^job {job} has no step 'nope'$"):
        orch.children(job, step="nope")
    with pytest.raises(NotFound, match=f"^job {job} has no step 'nope'$"):
        orch.logs(job, step="nope")
    assert orch.children(a_id, step="a")["children"] == orch.children(job, step="a")["children"]
    assert orch.logs(kid, step="a")["logs"] == orch.logs(kid)["logs"]


# ---------------------------------------------------------------- logs


def test_logs_are_stored_under_the_job_that_wrote_them(backend_orch, backend):
    orch = backend_orch
    job = orch.start("ab", plan(
        backend.token,
        a=step(*[child(log=["debug", f"child {n} debug"], std_log=f"child {n} via logging") for n in range(3)],
               logs=[["info", "handler line"]]),
        b=step(logs=[["error", "b line"]]),
    ))
    snap = ended(orch, backend, job)
    steps = steps_of(snap)
    for name, one in steps.items():
        lines = all_logs(orch, job, step=name)
        assert len(lines) == one["log_count"] > 0
        assert all(line["step_name"] == name and line["step_id"] == one["id"] for line in lines)
        assert all(line["manager_id"] == job and line["job_id"] for line in lines)
        assert all_logs(orch, one["id"]) == lines  # a step's own id reads the same lines
    a_lines = all_logs(orch, job, step="a")
    handler = [line for line in a_lines if line["message"] == "handler line"]
    assert len(handler) == 1 and handler[0]["job_id"] == steps["a"]["id"] and handler[0]["level"] == "info"
    via_logging = [line for line in a_lines if "via logging" in line["message"]]
    assert len(via_logging) == 3 and all(line["level"] == "warning" for line in via_logging)
    assert steps["a"]["id"] not in {line["job_id"] for line in via_logging}
    one_child, n = via_logging[0]["job_id"], via_logging[0]["message"].split()[1]
    own = all_logs(orch, one_child)
    assert {line["job_id"] for line in own} == {one_child}
    assert sorted(line["message"] for line in own) == ["attempt 1", f"child {n} debug", f"child {n} via logging"]
    everything = all_logs(orch, job)
    assert len(everything) == snap["job"]["log_count"]
    assert [line["seq"] for line in everything] == sorted({line["seq"] for line in everything})
    warnings = all_logs(orch, job, level="warning")
    assert all(line["level"] in ("warning", "error") for line in warnings)
    assert [line["seq"] for line in warnings] == [line["seq"] for line in everything
                                                   if line["level"] in ("warning", "error")]
    assert [line["message"] for line in all_logs(orch, job, step="b", level="error")] == ["b line"]
    with pytest.raises(ValueError, match="unknown log level"):
        orch.logs(job, level="loud")
    with pytest.raises(NotFound):
        orch.logs(job, step="nope")


def test_odd_params_and_texts_come_back_as_stored_with_visible_replacements(backend_orch, backend):
    orch = backend_orch
    params = plan(backend.token, a=step(child(odd=True), echo_params=True))
    params["odd"] = {"big": 2**62 + 1, "small": -(2**53) - 1, "float": 0.1, "exp": 1e300, "text": "ünï ✓ \u2028 \"q\"",
                     "nested": [[{"a": None, "b": True}], []], "empty": {}, "": "empty key"}
    job = orch.start("a", params)
    snap = ended(orch, backend, job)
    assert snap["job"]["params"] == params
    echoed = [line["message"] for line in all_logs(orch, job, step="a") if line["message"].startswith("{")]
    assert echoed == [json.dumps(params, sort_keys=True)]  # what the handler read
    kid = all_children(orch, job)[0]
    error, _ = describe(RuntimeError(ODD_ERROR))
    assert kid["error"] == error == "RuntimeError: first line ✓ \ufffd"
    assert "second line" in kid["traceback"] and "\ufffd" in kid["traceback"]
    lines = [line["message"] for line in all_logs(orch, kid["id"], level="info") if line["message"].startswith("odd")]
    assert lines == [bounded(safe_str(ODD_LINE), MAX_LOG_CHARS)]
    assert lines[0].startswith("odd \ufffd nul \x00 tab \t ✓ xxx") and lines[0].endswith(" characters cut]")
    again = orch.rerun(job)
    assert ended(orch, backend, again)["job"]["params"] == params


def test_log_pages_follow_the_after_and_before_cursors(backend_orch, backend):
    orch = backend_orch
    job = orch.start("a", plan(backend.token, a=step(logs=[["info", f"line {n}"] for n in range(25)])))
    ended(orch, backend, job)
    seen, after = [], 0
    while True:
        page = orch.logs(job, step="a", after=after, limit=10)
        assert len(page["logs"]) <= 10
        seen += page["logs"]
        if page["next"] is None:
            break
        after = page["next"]
    assert seen == all_logs(orch, job, step="a")
    assert [line["message"] for line in seen if line["message"].startswith("line")] == [f"line {n}" for n in range(25)]
    assert len(seen) == len({line["seq"] for line in seen})
    middle = seen[12]["seq"]
    assert orch.logs(job, step="a", after=middle, limit=1000)["logs"] == seen[13:]
    # backwards from the newest: the tail first, then earlier pages, each ascending
    tail = orch.logs(job, step="a", before=10**9, limit=10)
    assert tail["logs"] == seen[-10:]
    back, before = [], 10**9
    while before is not None:
        page = orch.logs(job, before=before, limit=7)
        back = page["logs"] + back
        before = page["next"]
    assert back == all_logs(orch, job)


def test_a_log_search_finds_the_lines_that_contain_it_whatever_the_case(backend_orch, backend):
    orch = backend_orch
    lines = [["info", "fetched https://a.example/1"], ["error", "Upstream REJECTED the key"],
             ["info", "fetched https://b.example/2"], ["warning", "Ünïcode rejected twice"]]
    job = orch.start("a", plan(backend.token, a=step(child(log=["info", "child says rejected"]), logs=lines)))
    ended(orch, backend, job)

    def check() -> None:
        found = orch.logs(job, step="a", q="rejected")["logs"]
        assert [r["message"] for r in found] == ["Upstream REJECTED the key", "Ünïcode rejected twice",
                                                 "child says rejected"]
        assert [r["message"] for r in orch.logs(job, q="ÜNÏCODE")["logs"]] == ["Ünïcode rejected twice"]
        assert [r["message"] for r in orch.logs(job, q="rejected", level="warning")["logs"]] == [
            "Upstream REJECTED the key", "Ünïcode rejected twice"]
        assert orch.logs(job, q="nowhere")["logs"] == []
        assert orch.logs(job, q="\ud800")["logs"] == [] and orch.jobs(q="\ud800\x00")["jobs"] == []  # never raises
        page = orch.logs(job, q="rejected", limit=1)
        assert len(page["logs"]) == 1 and page["next"] is not None
        rest = orch.logs(job, q="rejected", after=page["next"])["logs"]
        assert page["logs"] + rest == orch.logs(job, q="rejected")["logs"]

    check()
    ended(orch, backend, orch.start("a", plan(backend.token)))  # SQLite: the first job is now read from disk
    check()


# ---------------------------------------------------------------- listings


def test_children_are_listed_in_creation_order_by_step_and_status_in_pages(backend_orch, backend):
    orch = backend_orch
    job = orch.start("ab", plan(
        backend.token,
        a=step(*[child(fail=1 if n in (1, 4) else 0) for n in range(7)]),
        b=step(child(), child(fail=1), child()),
    ))
    snap = ended(orch, backend, job)
    steps = steps_of(snap)
    listed = orch.children(job, limit=100)
    assert listed["next"] is None
    everything = listed["children"]
    assert [c["step_name"] for c in everything] == ["a"] * 7 + ["b"] * 3
    assert [c["status"] for c in everything] == (["completed", "failed", "completed", "completed", "failed"]
                                                 + ["completed"] * 2 + ["completed", "failed", "completed"])
    for c in everything:
        assert c["kind"] == "child" and c["name"] == "planned_child" and c["manager_id"] == job
        assert c["step_id"] == steps[c["step_name"]]["id"] == c["parent_id"]
        assert (c["depth"], c["attempt"], c["retries"]) == (1, 1, 0)
        assert c["error"] == ("RuntimeError: attempt 1" if c["status"] == "failed" else None)
    assert orch.children(job, step="a")["children"] == everything[:7]
    assert orch.children(steps["b"]["id"])["children"] == everything[7:]
    assert orch.children(job, status="failed")["children"] == [c for c in everything if c["status"] == "failed"]
    assert orch.children(job, step="b", status="completed")["children"] == [everything[7], everything[9]]
    pages, cursor = [], 0
    while cursor is not None:
        page = orch.children(job, limit=3, cursor=cursor)
        assert 0 < len(page["children"]) <= 3
        pages.append(page["children"])
        cursor = page["next"]
    assert [c for p in pages for c in p] == everything and len(pages) == 4
    filtered = all_children(orch, job, step="a", status="completed", limit=2)
    assert filtered == [c for c in everything[:7] if c["status"] == "completed"]
    assert orch.snapshot(everything[1]["id"])["job"] == everything[1]
    with pytest.raises(InvalidRequest):
        orch.children(everything[0]["id"])
    with pytest.raises(NotFound):
        orch.children(job, step="nope")


def test_jobs_are_listed_newest_first_by_status_definition_and_any_part_of_id_or_name_in_pages(backend_orch, backend):
    orch = backend_orch
    token = backend.token
    first = orch.start("a", plan(token, a=step(child())))
    orch.wait(first, TIMEOUT)
    failed = orch.start("ab", plan(token, a=step(child(fail=1))))
    orch.wait(failed, TIMEOUT)
    third = orch.start("a", plan(token))
    orch.wait(third, TIMEOUT)
    running = orch.start("ab", plan(token, a=step(hold=True)))

    def ids(**query) -> list[str]:
        return [j["id"] for j in orch.jobs(**query)["jobs"]]

    assert ids() == [running, third, failed, first]
    assert ids(status="running") == [running]
    assert ids(status="failed") == [failed]
    assert ids(status="completed") == [third, first]
    assert ids(status="cancelled") == []
    assert ids(definition="ab") == [running, failed]
    assert ids(definition="ab", status="failed") == [failed]
    assert ids(q=failed) == [failed]
    assert ids(q="zz") == []
    assert ids(q=first[:2]) == [running, third, failed, first]
    assert ids(q=failed[-5:]) == [failed]  # the last digits of an id find it
    assert ids(q=failed[-5:].upper()) == [failed]  # whatever the case
    named = [(running, "ab"), (third, "a"), (failed, "ab"), (first, "a")]
    assert ids(q="AB") == [i for i, d in named if "ab" in d or "ab" in i.lower()]  # a definition's name
    assert ids(q="b", status="failed") == [failed]
    page = orch.jobs(limit=3)
    assert [j["id"] for j in page["jobs"]] == [running, third, failed] and page["next"] is not None
    rest = orch.jobs(limit=3, cursor=page["next"])
    assert [j["id"] for j in rest["jobs"]] == [first] and rest["next"] is None
    page = orch.jobs(limit=1, status="completed")
    assert [j["id"] for j in page["jobs"]] == [third]
    assert [j["id"] for j in orch.jobs(limit=1, status="completed", cursor=page["next"])["jobs"]] == [first]
    for listed in orch.jobs()["jobs"]:  # a listed job is its snapshot without the params
        shown = orch.snapshot(listed["id"])["job"]
        assert listed == {k: v for k, v in shown.items() if k != "params"}


# ---------------------------------------------------------------- wait


def test_wait_returns_the_final_snapshot_or_raises_timeout(backend_orch, backend):
    orch = backend_orch
    job = orch.start("ab", plan(backend.token, a=step(child(hold="child"), hold=True)))
    until(lambda: orch.snapshot(job)["job"]["progress"]["running"] == 1, what="the child running")
    held_child = all_children(orch, job)[0]["id"]
    with pytest.raises(TimeoutError):
        orch.wait(job, timeout=0.2)
    with pytest.raises(TimeoutError):
        orch.wait(held_child, timeout=0.2)
    gate(backend.token, "child").set()
    child_end = orch.wait(held_child, TIMEOUT)["job"]
    assert child_end["id"] == held_child and child_end["status"] == "completed"
    with pytest.raises(TimeoutError):
        orch.wait(job, timeout=0.2)  # the step's handler still holds it
    gate(backend.token, "step a").set()
    final = orch.wait(job, TIMEOUT)
    assert final["job"]["status"] == "completed"
    assert all(s["status"] == "completed" for s in final["job"]["steps"])
    now = orch.snapshot(job)
    assert now["job"] == final["job"] and now["seq"] >= final["seq"]
    assert orch.wait(job, TIMEOUT)["job"] == final["job"]  # at once, once finished
    assert orch.wait(final["job"]["steps"][1]["id"], TIMEOUT)["job"]["status"] == "completed"
    assert orch.wait(held_child, TIMEOUT)["job"] == child_end
    with pytest.raises(NotFound):
        orch.wait("m_missing", 1)
    older = ended(orch, backend, job)  # read back as an older job: the same
    assert older["job"] == final["job"]
    for one in (*final["job"]["steps"], child_end):
        assert orch.wait(one["id"], TIMEOUT)["job"] == orch.snapshot(one["id"])["job"]
    assert orch.wait(held_child, TIMEOUT)["job"] == child_end


# ---------------------------------------------------------------- linkage and exact counts


def test_children_linked_by_parent_id_at_any_depth_count_in_their_step(backend_orch, backend):
    orch = backend_orch
    job = orch.start("ab", plan(backend.token, a=step(child(deeper=4))))
    snap = ended(orch, backend, job)
    steps = steps_of(snap)
    assert steps["a"]["progress"] == progress(5, completed=5)
    assert steps["b"]["progress"] == progress()
    children = all_children(orch, job)
    assert [c["depth"] for c in children] == [1, 2, 3, 4, 5]
    assert children[0]["parent_id"] == steps["a"]["id"]
    assert [c["parent_id"] for c in children[1:]] == [c["id"] for c in children[:-1]]
    deepest = orch.snapshot(children[-1]["id"])["job"]
    assert deepest["step_name"] == "a" and deepest["parent_id"] == children[3]["id"] and deepest["manager_id"] == job
    assert orch.children(job, step="a")["children"] == children


def test_children_spawned_from_outside_into_a_running_step_count_in_it(backend_orch, backend):
    orch = backend_orch
    job = orch.start("ab", plan(backend.token, a=step(hold=True)))
    step_id = orch.snapshot(job)["job"]["steps"][0]["id"]
    spawned = [orch.spawn(planned_child, child(fail=n % 2), backend.token, step_id=step_id) for n in range(6)]
    spawned.append(orch.spawn(planned_child, child(), backend.token, parent_id=spawned[0]))
    for child_id in spawned:  # each one can be read as soon as spawn returned its id
        shown = orch.snapshot(child_id)["job"]
        assert shown["id"] == child_id and shown["step_id"] == step_id and shown["manager_id"] == job
    gate(backend.token, "step a").set()
    snap = ended(orch, backend, job)
    assert steps_of(snap)["a"]["progress"] == progress(7, completed=4, failed=3)
    assert [c["id"] for c in all_children(orch, job)] == spawned
    assert all_children(orch, job)[-1]["parent_id"] == spawned[0]


def test_a_child_can_be_read_as_soon_as_its_spawn_returned_in_a_handler(backend_orch, backend):
    orch = backend_orch
    job = orch.start("a", plan(backend.token, a=step(*[child()] * 5, read_back=True)))
    snap = ended(orch, backend, job)
    assert steps_of(snap)["a"]["progress"] == progress(5, completed=5)
    reads = [line["message"] for line in all_logs(orch, job, step="a") if line["message"].startswith("read ")]
    assert reads == ["read child"] * 5


def test_crawler_and_agent_style_children_of_the_same_shape_count_the_same(backend_orch, backend):
    orch = backend_orch

    def tree(by_step: bool) -> dict:
        leaves = [child(fail=1), child(fail=1)]
        return child(by_step=by_step, kids=[child(by_step=by_step, kids=leaves)] * 2)

    crawler = ended(orch, backend, orch.start("a", plan(backend.token, a=step(tree(False)))))
    agent = ended(orch, backend, orch.start("a", plan(backend.token, a=step(tree(True), by_step=True))))
    assert steps_of(crawler)["a"]["progress"] == steps_of(agent)["a"]["progress"] \
        == progress(7, completed=3, failed=4)
    assert sorted(c["depth"] for c in all_children(orch, crawler["job"]["id"])) == [1, 2, 2, 3, 3, 3, 3]
    agent_step = agent["job"]["steps"][0]["id"]
    assert {(c["depth"], c["parent_id"]) for c in all_children(orch, agent["job"]["id"])} == {(1, agent_step)}


def test_counts_add_up_in_every_snapshot_while_a_job_runs(backend_orch, backend):
    orch = backend_orch
    many = step(*[child(fail=1 if n % 7 == 0 else 0) for n in range(300)])
    job = orch.start("ab", plan(backend.token, a=many, b=many))
    watcher = Watcher(orch, job)
    orch.wait(job, TIMEOUT)
    snapshots = watcher.stop()
    final = ended(orch, backend, job)
    assert len(snapshots) > 1
    for snap in [*snapshots, final]:
        check_counts(snap["job"])
        assert snap["seq"] <= final["seq"]
    assert [s["seq"] for s in snapshots] == sorted(s["seq"] for s in snapshots)
    for name in ("a", "b"):
        assert steps_of(final)[name]["progress"] == progress(300, completed=257, failed=43)


def test_a_snapshot_plus_the_events_after_it_folds_into_the_final_snapshot(backend_orch, backend):
    orch = backend_orch
    busy = step(*[child(fail=n % 3, retries=n % 2, kids=[child(log=["info", "kid"])] * (n % 3)) for n in range(30)],
                logs=[["warning", "step begins"]])
    job = orch.start("abc", plan(backend.token, a=busy, b=step(*busy["children"], by_step=True)))
    watcher = Watcher(orch, job)
    orch.wait(job, TIMEOUT)
    snapshots = watcher.stop()
    final = ended(orch, backend, job)
    picked = snapshots[:: max(1, len(snapshots) // 8)]  # a few, spread over the run
    assert_folds(orch, [*picked, final], final)
    assert final["job"]["status"] == "completed"
    # n % 3 kids each (30 in all); a child fails if it has fewer attempts than failing ones
    failing = sum(1 for n in range(30) if n % 3 > n % 2)
    for name in ("a", "b"):
        assert steps_of(final)[name]["progress"] == progress(60, completed=60 - failing, failed=failing)


def test_the_events_carry_each_child_and_log_line_as_it_is_stored(backend_orch, backend):
    orch = backend_orch
    kids = [child(fail=n % 3, retries=1, log=["warning", f"kid {n}"], kids=[child()] * (n % 2)) for n in range(12)]
    since = orch.stats()["seq"]  # before the job began
    job = orch.start("ab", plan(backend.token, a=step(*kids, logs=[["info", "a begins"]]), b=step(*kids, by_step=True)))
    final = ended(orch, backend, job)
    events = events_until(orch, since, final["seq"])
    last_status = {}
    for type_, data in events:
        if type_ == "job_status" and data["kind"] == "child":
            last_status[data["job_id"]] = {k: v for k, v in data.items() if k not in ("job_id", "seq")}
    listed = all_children(orch, job)
    assert len(listed) == 36 and {c["id"]: c for c in listed} == last_status
    streamed = [{k: v for k, v in data.items() if k not in ("log_count", "manager_log_count")}
                for type_, data in events if type_ == "log"]
    assert streamed == all_logs(orch, job)


def test_children_spawned_from_several_threads_at_once_count_and_fold_exactly(backend_orch, backend):
    orch = backend_orch
    kids = [child(fail=1 if n % 4 == 0 else 0, retries=n % 2) for n in range(20)]
    job = orch.start("ab", plan(backend.token, a=step(*kids, threads=3), b=step(child(kids=kids))))
    first = orch.snapshot(job)
    watcher = Watcher(orch, job)
    orch.wait(job, TIMEOUT)
    snapshots = watcher.stop()
    final = ended(orch, backend, job)
    failing = sum(1 for k in kids if k["fail"] > k["retries"])
    steps = steps_of(final)
    assert steps["a"]["progress"] == progress(60, completed=60 - 3 * failing, failed=3 * failing)
    assert steps["b"]["progress"] == progress(21, completed=21 - failing, failed=failing)
    assert len(all_children(orch, job)) == 81
    assert_folds(orch, [first, *snapshots[:: max(1, len(snapshots) // 4)]], final)


def test_async_handlers_and_children_run_and_count(backend_orch, backend):
    orch = backend_orch
    job = orch.start("async", {"agents": 5})
    snap = ended(orch, backend, job)
    assert steps_of(snap)["a"]["progress"] == progress(5, completed=4, failed=1)
    assert {r["message"] for r in all_logs(orch, job, level="info")} >= {f"agent {n}" for n in range(5)}
    failed = [c for c in all_children(orch, job) if c["status"] == "failed"]
    assert [c["error"] for c in failed] == ["ValueError: no answer"]


# ---------------------------------------------------------------- bad use, stats


def test_bad_use_raises_clear_errors_and_changes_nothing(backend_orch, backend):
    orch = backend_orch
    job = orch.wait(orch.start("a", plan(backend.token, a=step(child()))), TIMEOUT)["job"]
    orch.wait(orch.start("a", plan(backend.token)), TIMEOUT)  # a newer finished job
    step_id = job["steps"][0]["id"]
    seq = orch.stats()["seq"]
    with pytest.raises(NotFound, match="no definition named 'nope'"):
        orch.start("nope")
    with pytest.raises(ValueError, match="repeats step names: x"):
        orch.define("dup", [Step("x", print), Step("x", print)])
    with pytest.raises(ValueError, match="already defined"):
        orch.define("a", [Step("a", print)])
    with pytest.raises(NotFound, match="no job with id 'missing'"):
        orch.snapshot("missing")
    with pytest.raises(NotFound):
        orch.cancel("missing")
    with pytest.raises(Conflict, match="already completed"):
        orch.cancel(job["id"])
    with pytest.raises(InvalidRequest):
        orch.cancel(step_id)
    with pytest.raises(ValueError, match="JSON"):
        orch.start("a", params={"x": object()})
    with pytest.raises(ValueError, match="exactly one"):
        orch.spawn(planned_child, child(), backend.token)
    with pytest.raises(ValueError, match="unknown log level"):
        orch.logs(job["id"], level="loud")
    assert "dup" not in orch.definitions()
    assert orch.stats()["seq"] == seq
    assert orch.snapshot(job["id"])["job"] == job


def test_a_spawn_into_a_finished_step_is_refused_as_a_conflict(backend_orch, backend, request):
    orch = backend_orch
    job = orch.wait(orch.start("a", plan(backend.token, a=step(child()))), TIMEOUT)["job"]
    orch.wait(orch.start("a", plan(backend.token)), TIMEOUT)  # a newer finished job
    step_id = job["steps"][0]["id"]
    seq = orch.stats()["seq"]
    with pytest.raises(Conflict, match=f"step 'a' of job {job['id']} is completed; it takes no new children"):
        orch.spawn(planned_child, child(), backend.token, step_id=step_id)
    with pytest.raises(Conflict, match="completed; it takes no new children"):
        orch.spawn(planned_child, child(), backend.token, parent_id=all_children(orch, job["id"])[0]["id"])
    assert orch.stats()["seq"] == seq
    assert orch.snapshot(job["id"])["job"] == job


def test_stats_count_jobs_by_status_and_children_by_outcome(backend_orch, backend):
    orch = backend_orch
    token = backend.token
    orch.wait(orch.start("a", plan(token, a=step(child(), child(), child(fail=1)))), TIMEOUT)
    orch.wait(orch.start("ab", plan(token, a=step(child(fail=1), child(fail=2, retries=1)))), TIMEOUT)
    held = orch.start("a", plan(token, a=step(hold=True)))
    stats = orch.stats()
    assert stats["managers"] == {"completed": 1, "failed": 1, "running": 1}
    counters = stats["counters"]
    assert counters["child_completed"] == 2 and counters["child_failed"] == 3
    assert counters["child_running"] == 6  # every attempt begins
    assert stats["seq"] >= orch.snapshot(held)["seq"]
    lines = [line for listed in orch.jobs()["jobs"] for line in all_logs(orch, listed["id"])]
    for level in LEVELS:
        assert counters.get(f"log_{level}", 0) == sum(line["level"] == level for line in lines), level
    emitted = {kind: n for kind, n in counters.items() if not kind.startswith(("child_", "log_"))}
    assert sum(emitted.values()) == stats["seq"], emitted  # events emitted, by type: each took one seq
    orch.cancel(held)  # acknowledged: durable
    assert orch.stats()["managers"] == {"completed": 1, "failed": 1, "cancelled": 1}


def test_stats_count_a_job_as_soon_as_wait_has_returned_it(backend_orch, backend, request):
    orch = backend_orch
    job = orch.start("a", plan(backend.token, a=step(child(), hold=True)))
    with backend.writes_held(orch):  # a slow disk, say: what was done is not written yet
        gate(backend.token, "step a").set()
        assert orch.wait(job, TIMEOUT)["job"]["status"] == "completed"
        assert [j["id"] for j in orch.jobs(status="completed")["jobs"]] == [job]
        assert orch.stats()["managers"] == {"completed": 1}


# ---------------------------------------------------------------- any job shape


child_specs = st.recursive(
    st.builds(child, fail=st.integers(0, 2), retries=st.integers(0, 1)),
    lambda kids: st.builds(child, fail=st.integers(0, 2), retries=st.integers(0, 1),
                           kids=st.lists(kids, max_size=2), by_step=st.booleans()),
    max_leaves=5,
)
step_plans = st.builds(
    lambda kids, raises, by_step: step(*kids, by_step=by_step, **({"raises": "bad input"} if raises else {})),
    st.lists(child_specs, max_size=3), st.booleans(), st.booleans(),
)
job_plans = st.lists(step_plans, min_size=1, max_size=3)


def tally(spec: dict) -> tuple[int, int]:
    """(children, failed children) of a child spec with its kids: it fails if it has fewer
    attempts than failing ones."""
    total, failed = 1, int(spec["fail"] > spec["retries"])
    for kid in spec["kids"]:
        t, f = tally(kid)
        total, failed = total + t, failed + f
    return total, failed


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(shape=job_plans)
def test_any_job_shape_ends_as_the_status_rules_say_and_its_stream_folds_exactly(backend_orch, backend, shape):
    orch = backend_orch
    names = "abc"[: len(shape)]
    job = orch.start(names, plan(backend.token, **dict(zip(names, shape, strict=True))))
    first = orch.snapshot(job)
    final = ended(orch, backend, job)
    steps = steps_of(final)
    failed_step = None
    for name, spec in zip(names, shape, strict=True):
        if failed_step is not None:
            assert steps[name]["status"] == "skipped" and steps[name]["progress"] == progress()
            continue
        total = failed = 0
        for kid in spec["children"]:
            t, f = tally(kid)
            total, failed = total + t, failed + f
        assert steps[name]["progress"] == progress(total, completed=total - failed, failed=failed), name
        if spec.get("raises"):
            assert (steps[name]["status"], steps[name]["error"]) == ("failed", "ValueError: bad input")
            failed_step = name
        elif total and failed == total:
            assert (steps[name]["status"], steps[name]["error"]) == ("failed", f"all {total} children failed")
            failed_step = name
        else:
            assert (steps[name]["status"], steps[name]["error"]) == ("completed", None)
    if failed_step is None:
        assert (final["job"]["status"], final["job"]["error"]) == ("completed", None)
    else:
        assert final["job"]["status"] == "failed"
        assert final["job"]["error"] == f"step {failed_step!r} failed: {steps[failed_step]['error']}"
    check_counts(final["job"])
    listed = all_children(orch, job)
    assert len(listed) == final["job"]["progress"]["total"]
    for status in ("completed", "failed"):
        assert sum(c["status"] == status for c in listed) == final["job"]["progress"][status]
    assert len(all_logs(orch, job)) == final["job"]["log_count"]
    for name in names:
        assert len(all_logs(orch, job, step=name)) == steps[name]["log_count"]
    assert_folds(orch, [first], final)
