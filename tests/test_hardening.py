"""Hostile values everywhere: params, log text, exceptions, handlers that never end, listeners
that raise, bad ids. None of them may break a stream, a count, a listing or the server.

Each family of the hardening work has its tests here (the HTTP 4xx table is in test_server.py,
the hostile page in test_security.py).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import threading

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.folding import check_progress
from harness.live import LiveServer, sse_events
from stepstream import Orchestrator, Step
from stepstream.server import create_app

TIMEOUT = 20
SURROGATE_NAME = "caf\udce9.txt"  # what os.listdir gives for a Latin-1 file name on a UTF-8 system


@pytest.fixture
def orch():
    o = Orchestrator(max_workers=4)
    yield o
    o.shutdown(wait=False)


def statuses(snapshot: dict) -> list[str]:
    job = snapshot["job"]
    return [job["status"]] + [s["status"] for s in job["steps"]]


# ---------------------------------------------------------------- 1. strict JSON at the boundary


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


DEEP: dict = {}
_cursor = DEEP
for _ in range(100):
    _cursor["a"] = {}
    _cursor = _cursor["a"]

REJECTED_PARAMS = [
    {"x": float("nan")},
    {"x": [float("inf")]},
    {"x": "\ud800"},
    {"\udce9": 1},
    {"x": {1, 2}},
    {1: "int key"},
    {"x": object()},
    DEEP,
    {"pad": "x" * 70_000},
    "not a dict",
]


@pytest.mark.parametrize("params", REJECTED_PARAMS, ids=range(len(REJECTED_PARAMS)))
def test_params_that_are_not_strict_json_are_refused_and_nothing_is_created(orch, params):
    orch.define("d", [Step("a", lambda ctx: None)])
    seq = orch.store.seq
    with pytest.raises(ValueError):
        orch.start("d", params)
    assert orch.store.seq == seq
    assert orch.store.list_managers()["jobs"] == []


def test_params_limits_are_settings(orch):
    small = Orchestrator(max_workers=1, max_params_depth=2, max_params_bytes=20)
    try:
        small.define("d", [Step("a", lambda ctx: None)])
        with pytest.raises(ValueError, match="nested"):
            small.start("d", {"a": {"b": {}}})
        with pytest.raises(ValueError, match="bytes"):
            small.start("d", {"a": "x" * 30})
        small.wait(small.start("d", {"a": {"b": 1}}), TIMEOUT)
    finally:
        small.shutdown()


def test_each_handler_gets_its_own_copy_of_the_params(orch):
    seen = []

    def child(ctx, n):
        seen.append(sorted(ctx.params))
        ctx.params["mine"] = {n, "a set"}  # not JSON, and not anyone else's business

    def fan_out(ctx):
        ctx.params["seen"] = {1, 2}
        for n in range(3):
            ctx.spawn(child, n)

    orch.define("d", [Step("a", fan_out)])
    final = orch.wait(orch.start("d", {"keep": [1, 2]}), TIMEOUT)
    assert final["job"]["params"] == {"keep": [1, 2]}
    assert seen == [["keep"]] * 3
    json.dumps(orch.snapshot(final["job"]["id"]), allow_nan=False)


# ---------------------------------------------------------------- 2. output that cannot fail


def test_unencodable_text_is_shown_with_a_replacement_and_never_breaks_a_stream(orch):
    gate = threading.Event()

    def step(ctx):
        ctx.log("info", f"found {SURROGATE_NAME}")
        gate.wait(TIMEOUT)
        raise OSError(f"cannot open {SURROGATE_NAME}")

    def later(ctx):
        ctx.log("info", "after the bad line")

    orch.define("d", [Step("a", step), Step("b", later)])
    with LiveServer(create_app(orch)) as srv, httpx.Client(base_url=srv.url, timeout=TIMEOUT) as client:
        with client.stream("GET", "/api/events") as all_jobs:
            events = sse_events(all_jobs)
            assert next(events)["event"] == "snapshot"
            job_id = orch.start("d")
            for event in events:
                if event["event"] == "log" and "found" in event["data"]["message"]:
                    assert event["data"]["message"] == "found caf\ufffd.txt"
                    gate.set()
                if event["event"] == "end":
                    break
        final = client.get(f"/api/jobs/{job_id}").json()["job"]
        assert final["status"] == "failed" and "caf\ufffd.txt" in final["steps"][0]["error"]
        logs = client.get(f"/api/jobs/{job_id}/logs")
        assert logs.status_code == 200
        assert any(r["message"] == "found caf\ufffd.txt" for r in logs.json()["logs"])
        assert client.get("/api/jobs").status_code == 200
        # resuming from before the bad line replays it without failing
        run_id = client.get("/api/health").json()["run_id"]
        with client.stream("GET", "/api/events", params={"job": job_id},
                           headers={"Last-Event-ID": f"{run_id}-1"}) as resumed:
            kinds = [e["event"] for e in sse_events(resumed)]
        assert kinds[-1] == "end" and "snapshot" not in kinds


def test_an_unknown_server_error_is_a_json_500_with_the_traceback_in_the_log(orch, caplog, monkeypatch):
    def broken(job_id):
        raise ValueError("a bug, not the client's fault")

    monkeypatch.setattr(orch, "snapshot", broken)
    with LiveServer(create_app(orch)) as srv:
        response = httpx.get(f"{srv.url}/api/jobs/anything", timeout=TIMEOUT)
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "a bug, not the client's fault" in caplog.text and "Traceback" in caplog.text


# ---------------------------------------------------------------- 3. every attempt ends


class Boom(BaseException):
    pass


RAISED = {
    "SystemExit": SystemExit(3),
    "KeyboardInterrupt": KeyboardInterrupt(),
    "BaseException": Boom("base"),
    "unprintable": Unprintable(),
}


@pytest.mark.parametrize("name", RAISED)
@pytest.mark.parametrize("where", ["sync child", "async child", "sync step", "async step"])
def test_whatever_a_handler_raises_its_job_ends(orch, name, where):
    exc = RAISED[name]

    def sync_raise(ctx):
        raise exc

    async def async_raise(ctx):
        raise exc

    raiser = async_raise if where.startswith("async") else sync_raise
    if where.endswith("child"):
        steps = [Step("a", lambda ctx: ctx.spawn(raiser)), Step("b", lambda ctx: None)]
    else:
        steps = [Step("a", raiser), Step("b", lambda ctx: None)]
    orch.define("d", steps)
    final = orch.wait(orch.start("d"), TIMEOUT)
    assert statuses(final) == ["failed", "failed", "skipped"]
    step = final["job"]["steps"][0]
    check_progress(step["progress"])
    expected = "Unprintable: <exception str() failed>" if name == "unprintable" else type(exc).__name__
    if where.endswith("child"):
        child = orch.children(final["job"]["id"])["children"][0]
        assert child["status"] == "failed" and child["error"].startswith(expected)
        assert "Traceback" in child["traceback"]
    else:
        assert step["error"].startswith(expected) and "Traceback" in step["traceback"]
    assert final["job"]["traceback"] == (None if where.endswith("child") else step["traceback"])


def test_the_event_loop_survives_system_exit_in_an_async_child(orch):
    async def exits(ctx):
        raise SystemExit(1)

    async def fine(ctx):
        await asyncio.sleep(0)
        ctx.log("info", "still running")

    orch.define("d", [Step("a", lambda ctx: ctx.spawn(exits)), Step("b", lambda ctx: ctx.spawn(fine))])
    final = orch.wait(orch.start("d", {}), TIMEOUT)
    assert statuses(final) == ["failed", "failed", "skipped"]
    orch.define("e", [Step("a", lambda ctx: [ctx.spawn(fine) for _ in range(3)])])
    again = orch.wait(orch.start("e"), TIMEOUT)
    assert again["job"]["status"] == "completed" and again["job"]["progress"]["completed"] == 3


def test_a_raising_listener_is_isolated_and_the_next_step_still_starts(orch, caplog):
    calls = []

    def bad_listener():
        raise RuntimeError("listener bug")

    orch.store.subscribe(bad_listener)
    orch.store.subscribe(lambda: calls.append(1))
    orch.define("d", [Step("a", lambda ctx: ctx.spawn(lambda c: None)), Step("b", lambda ctx: None)])
    final = orch.wait(orch.start("d"), TIMEOUT)
    assert statuses(final) == ["completed", "completed", "completed"]
    assert calls and "listener bug" in caplog.text


def test_shutdown_without_waiting_settles_code_that_never_returns(orch):
    stuck = threading.Event()
    release = threading.Event()

    def blocks(ctx):
        stuck.set()
        release.wait(60)  # "forever"

    orch.define("d", [Step("a", lambda ctx: ctx.spawn(blocks)), Step("b", lambda ctx: None)])
    job_id = orch.start("d")
    assert stuck.wait(TIMEOUT)
    orch.shutdown(wait=False)
    final = orch.wait(job_id, 5)
    assert statuses(final) == ["cancelled", "cancelled", "skipped"]
    child = orch.children(job_id)["children"][0]
    assert child["status"] == "cancelled" and "interrupted" in child["error"]
    release.set()  # the abandoned code returns late: nothing changes
    seq = orch.store.seq
    assert orch.wait(job_id, 1) == final and orch.store.seq == seq


def test_a_process_with_blocked_workers_still_exits_promptly(tmp_path):
    script = tmp_path / "blocked.py"
    script.write_text(textwrap.dedent("""
        import threading, time
        from stepstream import Orchestrator, Step
        started = threading.Event()
        def blocks(ctx):
            started.set()
            time.sleep(3600)
        orch = Orchestrator(max_workers=2)
        orch.define("d", [Step("a", lambda ctx: ctx.spawn(blocks))])
        job = orch.start("d")
        started.wait(10)
        orch.shutdown(wait=False)
        job = orch.snapshot(job)["job"]
        print(job["status"], job["steps"][0]["status"], orch.children(job["id"])["children"][0]["status"], flush=True)
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["cancelled", "cancelled", "cancelled"]


# ---------------------------------------------------------------- 5. bounded memory per connection


def test_stream_snapshots_carry_summaries_whatever_the_params(orch):
    orch.define("d", [Step("a", lambda ctx: None)])
    for n in range(10):
        orch.wait(orch.start("d", {"pad": "x" * 60_000, "n": n}), TIMEOUT)
    with LiveServer(create_app(orch)) as srv:
        with httpx.stream("GET", f"{srv.url}/api/events", timeout=TIMEOUT) as response:
            snapshot = next(sse_events(response))
    assert len(snapshot["data"]["jobs"]) == 10
    assert len(json.dumps(snapshot["data"])) < 20_000  # the params alone are 600,000 bytes
    assert all("params" not in job for job in snapshot["data"]["jobs"])


@pytest.mark.parametrize("params", [{"size": 10**9}, {"speed": 1e8}, {"speed": -1}, {"size": "40"},
                                    {"fail_rate": 2}, {"colour": "red"}])
def test_demo_definitions_refuse_params_that_would_not_end(params):
    from stepstream import demo

    o = Orchestrator(max_workers=1)
    demo.register(o)
    try:
        with LiveServer(create_app(o)) as srv:
            response = httpx.post(f"{srv.url}/api/jobs", json={"definition": "web_crawl", "params": params})
            assert response.status_code == 422, response.text
            assert response.json()["error"]["code"] == "invalid_params"
            assert httpx.get(f"{srv.url}/api/jobs").json()["jobs"] == []
    finally:
        o.shutdown(wait=False)


# ---------------------------------------------------------------- 6. stream edges


def test_resuming_a_finished_job_stream_gets_204_and_unusable_ids_get_a_snapshot(orch):
    orch.define("d", [Step("a", lambda ctx: ctx.spawn(lambda c: None))])
    job_id = orch.start("d")
    orch.wait(job_id, TIMEOUT)
    with LiveServer(create_app(orch)) as srv, httpx.Client(base_url=srv.url, timeout=TIMEOUT) as client:
        with client.stream("GET", "/api/events", params={"job": job_id}) as response:
            events = list(sse_events(response))
        end_id = events[-1]["id"]
        assert events[-1]["event"] == "end"
        run_id = end_id.rsplit("-", 1)[0]
        for last_id in (end_id, f"{run_id}-{orch.store.seq}"):
            resumed = client.get("/api/events", params={"job": job_id}, headers={"Last-Event-ID": last_id})
            assert resumed.status_code == 204, last_id
        for garbage in (f"{run_id}-{'9' * 5000}", f"{run_id}-\u0661\u0662", "x" * 10_000, "-", f"{run_id}--1"):
            with client.stream("GET", "/api/events", params={"job": job_id},
                               headers={"Last-Event-ID": garbage.encode()}) as response:
                assert response.status_code == 200
                kinds = [e["event"] for e in sse_events(response)]
            assert kinds == ["snapshot", "end"], garbage


# ---------------------------------------------------------------- property: any JSON in, never a 5xx

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def quick_server():
    o = Orchestrator(max_workers=2)
    o.define("quick", [Step("a", lambda ctx: ctx.log("info", repr(ctx.params)[:200]))])
    with LiveServer(create_app(o)) as srv:
        yield o, srv
    o.shutdown(wait=False)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=JSON_VALUES | st.fixed_dictionaries({"definition": st.just("quick"), "params": JSON_VALUES}))
def test_any_json_body_never_gets_a_5xx_and_a_created_job_is_served_everywhere(quick_server, body):
    orch, srv = quick_server
    with httpx.Client(base_url=srv.url, timeout=TIMEOUT) as client:
        before = client.get("/api/jobs", params={"limit": 200}).json()["jobs"]
        text = json.dumps(body, allow_nan=True)  # NaN and Infinity included, as a hostile client sends them
        response = client.post("/api/jobs", content=text, headers={"Content-Type": "application/json"})
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            assert response.json()["error"]["code"]
            assert client.get("/api/jobs", params={"limit": 200}).json()["jobs"] == before
            return
        assert response.status_code == 201
        job_id = response.json()["job"]["id"]
        orch.wait(job_id, TIMEOUT)
        assert client.get(f"/api/jobs/{job_id}").status_code == 200
        assert any(j["id"] == job_id for j in client.get("/api/jobs", params={"q": job_id}).json()["jobs"])
        assert client.get(f"/api/jobs/{job_id}/logs").status_code == 200
        with client.stream("GET", "/api/events", params={"job": job_id}) as stream:
            assert [e["event"] for e in sse_events(stream)][-1] == "end"
