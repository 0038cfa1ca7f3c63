"""The operator's routes against a live server: find any job, rerun, delete, tracebacks, log
export, metrics. (Their bad inputs are in test_server.py's table.)"""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from harness.live import sse_events
from stepstream import Step

TIMEOUT = 20


@pytest.fixture
def client(server):  # `orch` and `server` come from conftest.py
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as c:
        yield c


def failing_child(ctx, n):
    ctx.log("info", f"child {n}")
    if n == 1:
        raise KeyError(f"record {n} has no id")


def fan_out(ctx):
    for n in range(3):
        ctx.spawn(failing_child, n)


def test_jobs_are_found_by_status_definition_and_id_prefix_and_paged(orch, client):
    orch.define("ok", [Step("a", lambda ctx: None)])
    orch.define("bad", [Step("a", lambda ctx: 1 / 0)])
    ids = []
    for n in range(5):
        ids.append(orch.start("ok" if n % 2 == 0 else "bad"))
        orch.wait(ids[-1], TIMEOUT)
    listed = client.get("/api/jobs").json()["jobs"]
    assert [j["id"] for j in listed] == ids[::-1]
    assert all("params" not in j for j in listed)  # listings carry summaries
    bad = client.get("/api/jobs", params={"definition": "bad"}).json()["jobs"]
    assert [j["id"] for j in bad] == [ids[3], ids[1]]
    failed = client.get("/api/jobs", params={"status": "failed", "definition": "bad"}).json()["jobs"]
    assert [j["id"] for j in failed] == [ids[3], ids[1]]
    assert client.get("/api/jobs", params={"definition": "nope"}).json()["jobs"] == []
    assert [j["id"] for j in client.get("/api/jobs", params={"q": ids[2]}).json()["jobs"]] == [ids[2]]
    prefix = ids[0][:-3]
    assert {j["id"] for j in client.get("/api/jobs", params={"q": prefix}).json()["jobs"]} == \
        {i for i in ids if i.startswith(prefix)}
    first = client.get("/api/jobs", params={"limit": 2}).json()
    second = client.get("/api/jobs", params={"limit": 2, "cursor": first["next"]}).json()
    third = client.get("/api/jobs", params={"limit": 2, "cursor": second["next"]}).json()
    assert [j["id"] for j in first["jobs"] + second["jobs"] + third["jobs"]] == ids[::-1]
    assert third["next"] is None
    unknown = client.get("/api/jobs", params={"sort": "name"})
    assert unknown.status_code == 400
    assert "known: status, definition, q, limit, cursor" in unknown.json()["error"]["message"]


def test_a_failure_carries_its_traceback_in_the_api_and_in_the_step_log(orch, client):
    def handler_raises(ctx):
        fan_out(ctx)
        raise RuntimeError("the step's own code broke\nsecond line")

    orch.define("d", [Step("a", handler_raises), Step("b", lambda ctx: None)])
    job_id = orch.start("d")
    orch.wait(job_id, TIMEOUT)
    job = client.get(f"/api/jobs/{job_id}").json()["job"]
    step = job["steps"][0]
    assert job["status"] == "failed" and step["status"] == "failed"
    assert step["error"] == "RuntimeError: the step's own code broke"  # one line
    assert step["traceback"].startswith("Traceback (most recent call last):")
    assert "in handler_raises" in step["traceback"] and step["traceback"].endswith("second line")
    assert job["traceback"] == step["traceback"] and "step 'a' failed" in job["error"]
    assert job["steps"][1]["traceback"] is None
    children = client.get(f"/api/jobs/{job_id}/children").json()["children"]
    broken = next(c for c in children if c["status"] == "failed")
    assert broken["error"] == "KeyError: 'record 1 has no id'" and "in failing_child" in broken["traceback"]
    assert client.get(f"/api/jobs/{broken['id']}").json()["job"]["traceback"] == broken["traceback"]
    assert all(c["traceback"] is None and c["depth"] == 1 for c in children if c["status"] == "completed")
    errors = client.get(f"/api/jobs/{job_id}/logs", params={"step": "a", "level": "error"}).json()["logs"]
    assert any(broken["traceback"] in r["message"] and r["job_id"] == broken["id"] for r in errors)
    assert any(step["traceback"] in r["message"] for r in errors)


def test_rerun_starts_the_same_definition_and_params_again(orch, client):
    orch.define("d", [Step("a", fan_out)])
    first = client.post("/api/jobs", json={"definition": "d", "params": {"city": "Porto", "n": [1, 2]}}).json()
    orch.wait(first["job"]["id"], TIMEOUT)
    again = client.post(f"/api/jobs/{first['job']['id']}/rerun")
    assert again.status_code == 201
    job = again.json()["job"]
    assert job["id"] != first["job"]["id"] and job["rerun_of"] == first["job"]["id"]
    assert job["definition"] == "d" and job["params"] == {"city": "Porto", "n": [1, 2]}
    assert again.headers["location"] == f"/api/jobs/{job['id']}"
    assert client.get(again.headers["location"]).json()["job"]["rerun_of"] == first["job"]["id"]
    assert first["job"]["rerun_of"] is None


def test_delete_removes_a_finished_job_and_tells_open_streams(orch, client):
    gate = threading.Event()
    orch.define("d", [Step("a", fan_out)])
    orch.define("held", [Step("a", lambda ctx: gate.wait(TIMEOUT))])
    done, held = orch.start("d"), orch.start("held")
    orch.wait(done, TIMEOUT)
    try:
        assert client.delete(f"/api/jobs/{held}").status_code == 409
        child = client.get(f"/api/jobs/{done}/children").json()["children"][0]["id"]
        with client.stream("GET", "/api/events") as all_jobs:
            events = sse_events(all_jobs)
            assert next(events)["event"] == "snapshot"
            assert client.delete(f"/api/jobs/{done}").status_code == 204
            deleted = next(events)
        assert deleted["event"] == "job_deleted" and deleted["data"]["manager_id"] == done
        for path in (f"/api/jobs/{done}", f"/api/jobs/{child}", f"/api/jobs/{done}/logs"):
            assert client.get(path).status_code == 404, path
        assert done not in {j["id"] for j in client.get("/api/jobs").json()["jobs"]}
        assert client.delete(f"/api/jobs/{done}").status_code == 404
        run_id = client.get("/api/health").json()["run_id"]
        resumed = client.get("/api/events", params={"job": done}, headers={"Last-Event-ID": f"{run_id}-1"})
        assert resumed.status_code == 204  # nothing will ever come: EventSource stops reconnecting
    finally:
        gate.set()


def test_logs_export_every_line_as_ndjson_or_text_beyond_the_page_limit(orch, client):
    def noisy(ctx):
        for n in range(12_000):
            ctx.log("warning" if n % 3 == 0 else "debug", f"line {n}\u2028with a separator")

    orch.define("d", [Step("a", noisy), Step("b", lambda ctx: ctx.log("info", "in b"))])
    job_id = orch.start("d")
    orch.wait(job_id, TIMEOUT)
    with client.stream("GET", f"/api/jobs/{job_id}/logs", params={"format": "ndjson"}) as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        assert "attachment" in response.headers["content-disposition"]
        records = [json.loads(line) for line in response.iter_lines() if line]
    job = client.get(f"/api/jobs/{job_id}").json()["job"]
    assert len(records) == job["log_count"] > 12_000
    assert [r["seq"] for r in records] == sorted(r["seq"] for r in records)
    warnings = client.get(f"/api/jobs/{job_id}/logs", params={"format": "ndjson", "step": "a", "level": "warning"})
    assert len(warnings.text.splitlines()) == 4000
    text = client.get(f"/api/jobs/{job_id}/logs", params={"format": "text", "step": "b"})
    assert text.headers["content-type"].startswith("text/plain")
    lines = text.text.splitlines()
    assert len(lines) == 3 and "INFO" in lines[1] and lines[1].endswith("in b") and " b " in lines[1]


def test_metrics_count_jobs_transitions_logs_events_and_streams(orch, client):
    orch.define("d", [Step("a", fan_out)])
    job_id = orch.start("d")
    orch.wait(job_id, TIMEOUT)
    with client.stream("GET", "/api/events") as stream:
        events = sse_events(stream)  # kept: a dropped iterator closes the response
        next(events)
        text = client.get("/metrics").text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    assert values['stepstream_jobs{status="failed"}'] == 0 and values['stepstream_jobs{status="completed"}'] == 1
    assert values['stepstream_child_transitions_total{status="running"}'] == 3
    assert values['stepstream_child_transitions_total{status="completed"}'] == 2
    assert values['stepstream_child_transitions_total{status="failed"}'] == 1
    assert values["stepstream_seq"] == orch.seq
    assert values['stepstream_events_total{type="end"}'] == 1
    assert sum(v for k, v in values.items() if k.startswith("stepstream_events_total")) == orch.seq
    job = orch.snapshot(job_id)["job"]
    assert sum(v for k, v in values.items() if k.startswith("stepstream_log_lines_total")) == job["log_count"]
    assert values["stepstream_stream_connections"] == 1
