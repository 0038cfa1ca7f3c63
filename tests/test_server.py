"""The HTTP API against a real uvicorn server: routes, JSON errors, limits, mounting."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from harness.live import LiveServer, sse_events
from stepstream import Orchestrator, Step
from stepstream.server import create_app
from tests.conftest import mixed_definition

TIMEOUT = 30


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as c:
        yield c


def test_health_definitions_create_get_list_and_cancel(orch, client, gates):
    orch.define("mixed", mixed_definition(gates))
    assert client.get("/api/health").json()["status"] == "ok"
    definitions = client.get("/api/definitions").json()["definitions"]
    assert {"name": "mixed", "steps": ["discover", "extract", "report"]} in definitions

    created = client.post("/api/jobs", json={"definition": "mixed", "params": {"size": 3}})
    assert created.status_code == 201
    job = created.json()["job"]
    assert created.headers["location"].endswith(f"/api/jobs/{job['id']}")
    assert client.get(created.headers["location"]).json()["job"]["id"] == job["id"]
    assert job["params"] == {"size": 3} and job["status"] == "running" and job["current_step"] == "discover"

    second = client.post("/api/jobs", json={"definition": "mixed"}).json()["job"]
    listing = client.get("/api/jobs").json()
    assert [j["id"] for j in listing["jobs"][:2]] == [second["id"], job["id"]]
    assert listing["seq"] >= created.json()["seq"]
    page = client.get("/api/jobs", params={"limit": 1}).json()
    assert len(page["jobs"]) == 1 and page["next"] is not None
    rest = client.get("/api/jobs", params={"limit": 1, "cursor": page["next"]}).json()
    assert rest["jobs"][0]["id"] == job["id"]

    cancelled = client.post(f"/api/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["job"]["status"] == "cancelled"
    again = client.post(f"/api/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    assert client.get("/api/jobs", params={"status": "cancelled"}).json()["jobs"][0]["id"] == job["id"]


def test_step_and_child_jobs_carry_their_links(orch, client, gates):
    orch.define("mixed", mixed_definition(gates))
    job_id = orch.start("mixed")
    gates["mixed.discover"].set()
    gates["mixed.extract"].set()
    gates["mixed.report"].set()
    final = orch.wait(job_id, TIMEOUT)["job"]
    step = client.get(f"/api/jobs/{final['steps'][1]['id']}").json()["job"]
    links = (step["kind"], step["manager_id"], step["step_name"], step["parent_id"])
    assert links == ("step", job_id, "extract", job_id)
    children = client.get(f"/api/jobs/{job_id}/children", params={"step": "extract", "limit": 3}).json()
    assert len(children["children"]) == 3 and children["next"] is not None
    child = client.get(f"/api/jobs/{children['children'][0]['id']}").json()["job"]
    links = (child["kind"], child["manager_id"], child["step_id"], child["step_name"])
    assert links == ("child", job_id, step["id"], "extract")
    failed = client.get(f"/api/jobs/{job_id}/children", params={"status": "failed"}).json()["children"]
    assert len(failed) == final["progress"]["failed"]
    everything, cursor = [], 0
    while cursor is not None:
        page = client.get(f"/api/jobs/{job_id}/children", params={"cursor": cursor, "limit": 4}).json()
        everything += page["children"]
        cursor = page["next"]
    assert len(everything) == final["progress"]["total"] == len({c["id"] for c in everything})


def test_logs_of_a_running_step_have_every_field_and_match_log_count(orch, client, gates):
    orch.define("mixed", mixed_definition(gates))
    job_id = orch.start("mixed")
    gates["mixed.discover"].set()
    # hold "extract" running: its handler waits on its gate; its agents finish and log
    for _ in sse_events_until_children_done(client, job_id, "extract"):
        pass
    snap = client.get(f"/api/jobs/{job_id}").json()["job"]
    extract = next(s for s in snap["steps"] if s["name"] == "extract")
    assert extract["status"] == "running"
    lines = client.get(f"/api/jobs/{job_id}/logs", params={"step": "extract"}).json()["logs"]
    assert len(lines) == extract["log_count"] > 0
    for line in lines:
        assert set(line) == {"seq", "ts", "level", "message", "job_id", "step_id", "step_name", "manager_id"}
        assert all(line[k] is not None for k in line), line
        assert line["step_name"] == "extract" and line["step_id"] == extract["id"] and line["manager_id"] == job_id
    warnings = client.get(f"/api/jobs/{extract['id']}/logs", params={"level": "warning"}).json()["logs"]
    assert warnings and all(line["level"] in ("warning", "error") for line in warnings)
    assert len(warnings) < len(lines)
    gates.open_all()


def sse_events_until_children_done(client: httpx.Client, job_id: str, step: str):
    """Follow the job's stream until `step` runs with no pending or running child."""
    with client.stream("GET", "/api/events", params={"job": job_id}) as response:
        for event in sse_events(response):
            yield event
            if event["event"] == "snapshot":
                current = next(s for s in event["data"]["jobs"][0]["steps"] if s["name"] == step)
            elif event["event"] == "step_progress" and event["data"]["step_name"] == step:
                current = event["data"]
            else:
                continue
            p = current["progress"]
            if current["status"] == "running" and p["total"] and not p["pending"] and not p["running"]:
                return


JSON = {"Content-Type": "application/json"}
DEEP = b'{"definition": "mixed", "params": {"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"

BAD_REQUESTS = [
    ("POST", "/api/jobs", {"content": b"{not json", "headers": JSON}, 400, "malformed_json"),
    ("POST", "/api/jobs", {"json": ["a list"]}, 422, "invalid_body"),
    ("POST", "/api/jobs", {"json": {"definition": 5}}, 422, "invalid_body"),
    ("POST", "/api/jobs", {"json": {"definition": "mixed", "params": "x"}}, 422, "invalid_body"),
    ("POST", "/api/jobs", {"json": {"definition": "mixed", "extra": 1}}, 422, "invalid_body"),
    ("POST", "/api/jobs", {"json": {"definition": "nope"}}, 422, "unknown_definition"),
    ("POST", "/api/jobs", {"content": b'{"definition": "mixed", "params": {"pad": "' + b"x" * (1 << 20) + b'"}}',
                           "headers": JSON}, 413, "body_too_large"),
    ("POST", "/api/jobs", {"content": b"\xff\xfe", "headers": JSON}, 400, "malformed_json"),
    ("POST", "/api/jobs", {"content": b'{"definition": "mixed"}', "headers": {"Content-Type": "text/plain"}},
     415, "unsupported_media_type"),
    ("POST", "/api/jobs", {"content": b'{"definition": "mixed"}'}, 415, "unsupported_media_type"),
    ("POST", "/api/jobs", {"content": b'{"definition": "mixed", "params": {"x": NaN}}', "headers": JSON},
     422, "invalid_params"),
    ("POST", "/api/jobs", {"content": b'{"definition": "mixed", "params": {"x": [Infinity]}}', "headers": JSON},
     422, "invalid_params"),
    ("POST", "/api/jobs", {"content": b'{"definition": "mixed", "params": {"x": "\\ud800"}}', "headers": JSON},
     422, "invalid_params"),
    ("POST", "/api/jobs", {"content": b'{"definition": "mixed", "params": {"\\udce9": 1}}', "headers": JSON},
     422, "invalid_params"),
    ("POST", "/api/jobs", {"content": b'{"definition": "\\ud800"}', "headers": JSON}, 422, "unknown_definition"),
    ("POST", "/api/jobs", {"content": b'{"definition": "mixed", "params": {"a": ' + b"[" * 64 + b"]" * 64 + b"}}",
                           "headers": JSON}, 422, "invalid_params"),
    ("POST", "/api/jobs", {"json": {"definition": "mixed", "params": {"pad": "x" * 70_000}}}, 422, "invalid_params"),
    ("POST", "/api/jobs", {"content": DEEP, "headers": JSON}, 422, "invalid_body"),
    ("POST", "/api/jobs", {"json": {"definition": "mixed"}, "headers": {"Origin": "http://evil.example"}},
     403, "cross_site"),
    ("POST", "/api/jobs", {"json": {"definition": "mixed"}, "headers": {"Origin": "null"}}, 403, "cross_site"),
    ("POST", "/api/jobs/{job}/cancel", {"headers": {"Sec-Fetch-Site": "cross-site"}}, 403, "cross_site"),
    ("POST", "/api/jobs/{job}/cancel", {"headers": {"Sec-Fetch-Site": "same-site"}}, 403, "cross_site"),
    ("DELETE", "/api/jobs/{job}", {"headers": {"Origin": "http://127.0.0.1:1"}}, 403, "cross_site"),
    ("DELETE", "/api/jobs/{job}", {}, 409, "conflict"),
    ("DELETE", "/api/jobs/{step}", {}, 400, "bad_request"),
    ("DELETE", "/api/jobs/missing", {}, 404, "not_found"),
    ("POST", "/api/jobs/missing/rerun", {}, 404, "not_found"),
    ("POST", "/api/jobs/{step}/rerun", {}, 400, "bad_request"),
    ("GET", "/api/jobs?stauts=running", {}, 400, "unknown_parameter"),
    ("GET", "/api/jobs?cursor=" + "9" * 5000, {}, 400, "bad_parameter"),
    ("GET", "/api/jobs/{job}/logs?format=xml", {}, 400, "bad_parameter"),
    ("GET", "/api/jobs/{job}/logs?format=text&step=nope", {}, 404, "not_found"),
    ("GET", "/api/jobs/{job}/children?depth=2", {}, 400, "unknown_parameter"),
    ("GET", "/api/jobs/missing", {}, 404, "not_found"),
    ("GET", "/api/jobs/missing/logs", {}, 404, "not_found"),
    ("GET", "/api/jobs/missing/children", {}, 404, "not_found"),
    ("POST", "/api/jobs/missing/cancel", {}, 404, "not_found"),
    ("GET", "/api/jobs?limit=-1", {}, 400, "bad_parameter"),
    ("GET", "/api/jobs?limit=abc", {}, 400, "bad_parameter"),
    ("GET", "/api/jobs?limit=0", {}, 400, "bad_parameter"),
    ("GET", "/api/jobs?cursor=zz", {}, 400, "bad_parameter"),
    ("GET", "/api/jobs?status=done", {}, 400, "bad_parameter"),
    ("GET", "/api/jobs/{job}/logs?level=loud", {}, 400, "bad_parameter"),
    ("GET", "/api/jobs/{job}/logs?after=-3", {}, 400, "bad_parameter"),
    ("GET", "/api/jobs/{job}/logs?before=0", {}, 400, "bad_parameter"),
    ("GET", "/api/jobs/{job}/logs?step=nope", {}, 404, "not_found"),
    ("GET", "/api/jobs/{job}/children?cursor=x", {}, 400, "bad_parameter"),
    ("GET", "/api/events?job=missing", {}, 404, "not_found"),
    ("GET", "/api/events?children=maybe", {}, 400, "bad_parameter"),
    ("GET", "/api/events?job={step}", {}, 400, "bad_request"),
    ("DELETE", "/api/jobs", {}, 405, "method_not_allowed"),
    ("PUT", "/api/jobs/{job}/cancel", {}, 405, "method_not_allowed"),
    ("GET", "/api/nothing-here", {}, 404, "not_found"),
]


def test_bad_requests_get_their_4xx_json_error_and_change_nothing(orch, client, gates):
    orch.define("mixed", mixed_definition(gates))
    job_id = orch.start("mixed")
    for _ in sse_events_until_children_done(client, job_id, "discover"):
        pass  # now the job is idle, held by its gate: any change of seq would be ours
    step_id = orch.snapshot(job_id)["job"]["steps"][0]["id"]
    for method, path, kwargs, status, code in BAD_REQUESTS:
        before = client.get("/api/jobs").json()
        response = client.request(method, path.format(job=job_id, step=step_id), **kwargs)
        assert response.status_code == status, (method, path, response.text[:200])
        error = response.json()["error"]
        assert error["code"] == code and error["message"], (method, path, error)
        after = client.get("/api/jobs").json()
        assert after == before, f"{method} {path} changed state"
    finished = client.get(f"/api/jobs/{job_id}").json()
    assert client.get("/api/health").json()["status"] == "ok"
    assert finished["job"]["status"] == "running"


def test_over_large_limits_are_clamped(orch, client):
    orch.define("many", [Step("a", lambda ctx: [ctx.log("info", str(n)) for n in range(6000)])])
    job_id = orch.start("many")
    orch.wait(job_id, TIMEOUT)
    page = client.get(f"/api/jobs/{job_id}/logs", params={"limit": 10**9}).json()
    assert len(page["logs"]) == 5000 and page["next"] == page["logs"][-1]["seq"]


def test_mounted_under_a_prefix_page_api_and_stream_work(gates):
    orch = Orchestrator(max_workers=4)
    orch.define("mixed", mixed_definition(gates))
    host = Starlette(routes=[
        Route("/", lambda request: PlainTextResponse("host app")),
        Mount("/ops/queue", app=create_app(orch)),
    ])
    try:
        with LiveServer(host) as srv, httpx.Client(base_url=srv.url, timeout=TIMEOUT) as c:
            assert c.get("/").text == "host app"
            page = c.get("/ops/queue", follow_redirects=True)
            assert page.status_code == 200 and str(page.url).endswith("/ops/queue/")
            assert "<html" in page.text.lower()
            created = c.post("/ops/queue/api/jobs", json={"definition": "mixed"})
            assert created.status_code == 201
            assert created.headers["location"] == f"/ops/queue/api/jobs/{created.json()['job']['id']}"
            job_id = created.json()["job"]["id"]
            gates.open_all()
            with c.stream("GET", "/ops/queue/api/events", params={"job": job_id}) as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                kinds = [e["event"] for e in sse_events(response)]
            assert kinds[0] == "snapshot" and kinds[-1] == "end"
            assert c.get("/ops/queue/api/jobs/nope").status_code == 404
    finally:
        orch.shutdown(wait=False)


def test_health_says_how_many_workers_there_are_and_how_many_are_busy(orch, client):
    assert client.get("/api/health").json()["workers"] == {"size": 6, "busy": 0, "scope": "deployment"}
