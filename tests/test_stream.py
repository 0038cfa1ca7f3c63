"""The event stream against a real uvicorn server: order, folding, resume, slow clients, ends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc

import httpx
import pytest

from harness.folding import check_progress, fold
from harness.live import LiveServer, free_port, sse_events
from harness.processes import cli_env, until
from stepstream import Orchestrator, Step, demo
from stepstream.offload import StorageUnavailable
from stepstream.server import create_app
from tests.conftest import mixed_definition

TIMEOUT = 30


def watch(url: str, params: dict | None = None, headers: dict | None = None, stop=None,
          on_snapshot=None) -> list[dict]:
    """Read a stream until it closes (or `stop(event)` says so); return its events.
    `on_snapshot()` runs once the first snapshot is in (to let a held job go on)."""
    events = []
    with httpx.stream("GET", url + "/api/events", params=params or {}, headers=headers or {},
                      timeout=TIMEOUT) as response:
        assert response.status_code == 200
        for event in sse_events(response):
            events.append(event)
            if on_snapshot is not None and len(events) == 1:
                on_snapshot()
            if stop is not None and stop(event):
                break
    return events


def folded(events: list[dict], job_id: str) -> dict:
    """Fold a stream's events from its last snapshot on."""
    last = max(i for i, e in enumerate(events) if e["event"] == "snapshot")
    job = next(j for j in events[last]["data"]["jobs"] if j["id"] == job_id)
    return fold(job, [(e["event"], e["data"]) for e in events[last + 1:]])


def seqs_increase(events: list[dict]) -> None:
    seqs = [e["data"]["seq"] for e in events if e["event"] != "end"]
    assert seqs == sorted(set(seqs)), "seq must strictly increase"
    for e in events:
        run, _, seq = e["id"].rpartition("-")
        assert int(seq) == e["data"]["seq"] and run


def test_a_demo_job_watched_from_start_to_end_folds_into_the_final_snapshot(orch, server, gates):
    hold = Step("hold", lambda ctx: gates["hold"].wait(TIMEOUT))  # until the stream is connected
    orch.define("demo", [hold, *demo.DEFINITIONS["nearby_restaurants"]])
    job_id = orch.start("demo", {"size": 30, "speed": 0.05, "fail_rate": 0.1})
    events = watch(server.url, {"job": job_id}, on_snapshot=gates["hold"].set)
    assert events[0]["event"] == "snapshot" and events[0].get("retry")
    assert events[-1]["event"] == "end" and events[-1]["data"]["status"] in ("completed", "failed")
    seqs_increase(events)
    for e in events:
        assert e["data"].get("manager_id", job_id) == job_id or e["event"] == "snapshot"
        if e["event"] in ("step_progress", "job_progress"):
            check_progress(e["data"]["progress"])
        assert not (e["event"] == "job_status" and e["data"]["kind"] == "child"), "children only with ?children=1"
    final = httpx.get(f"{server.url}/api/jobs/{job_id}").json()
    assert folded(events, job_id) == final["job"]
    assert {e["event"] for e in events} >= {"snapshot", "job_status", "step_progress", "job_progress", "log", "end"}


def test_all_managers_stream_with_children_sees_every_child(orch, server, gates):
    orch.define("mixed", mixed_definition(gates))
    gates.open_all()
    events, job_id = [], None
    with httpx.stream("GET", server.url + "/api/events", params={"children": "1"}, timeout=TIMEOUT) as response:
        for event in sse_events(response):
            events.append(event)
            if event["event"] == "snapshot":
                job_id = orch.start("mixed")  # starts after we are watching: all of it is streamed
            elif event["event"] == "end":  # the all-jobs stream carries `end` too, and stays open
                break
    end = events[-1]
    assert end["event"] == "end" and end["data"]["manager_id"] == job_id and end["data"]["status"] == "completed"
    child_events = [e for e in events if e["event"] == "job_status" and e["data"]["kind"] == "child"]
    final = orch.wait(job_id, TIMEOUT)
    assert end["data"]["seq"] == final["seq"]  # a client that applied `end` holds the server's seq
    assert len({e["data"]["job_id"] for e in child_events}) == final["job"]["progress"]["total"] > 0
    summary = {k: v for k, v in final["job"].items() if k != "params"}  # streams carry summaries
    assert fold(events[1]["data"]["job"], [(e["event"], e["data"]) for e in events[1:]]) == summary


def test_disconnect_and_resume_with_last_event_id_misses_and_repeats_nothing(orch, server, gates):
    orch.define("mixed", mixed_definition(gates, crawl=9, agents=20))
    job_id = orch.start("mixed")

    def extract_running(event):
        if event["event"] == "snapshot":
            return event["data"]["jobs"][0]["current_step"] == "extract"
        return event["event"] == "job_status" and event["data"].get("step_name") == "extract" \
            and event["data"]["status"] == "running"

    first = watch(server.url, {"job": job_id}, stop=extract_running, on_snapshot=gates["mixed.discover"].set)
    # disconnected; the job goes on while nobody watches
    gates["mixed.extract"].set()
    gates["mixed.report"].set()
    orch.wait(job_id, TIMEOUT)
    second = watch(server.url, {"job": job_id}, headers={"Last-Event-ID": first[-1]["id"]})
    assert second[0]["event"] != "snapshot", "a valid id resumes without a snapshot"
    events = first + second
    seqs_increase(events)
    assert second[-1]["event"] == "end"
    logs = httpx.get(f"{server.url}/api/jobs/{job_id}/logs", params={"limit": 5000}).json()["logs"]
    streamed = [e["data"]["seq"] for e in events if e["event"] == "log"]
    since = first[0]["data"]["seq"]  # the first snapshot already counts the lines before it
    assert streamed == [line["seq"] for line in logs if line["seq"] > since], "every log line exactly once"
    assert len(streamed) > 10
    statuses = [(e["data"]["job_id"], e["data"]["status"]) for e in events if e["event"] == "job_status"]
    assert len(statuses) == len(set(statuses))
    assert folded(events, job_id) == orch.snapshot(job_id)["job"]


def test_old_foreign_or_garbled_ids_get_a_fresh_snapshot(gates):
    orch = Orchestrator(max_workers=2, replay_size=64)
    orch.define("mixed", mixed_definition(gates))
    try:
        with LiveServer(create_app(orch)) as srv:
            job_id = orch.start("mixed")
            first = watch(srv.url, {"job": job_id}, stop=lambda e: True)[0]
            run_id = first["id"].rpartition("-")[0]
            for n in range(200):  # push the first id out of the 64-event ring
                orch.store.log(job_id, "info", f"filler {n}")
            for bad in (first["id"], "someone-else-12", "garbage", f"{run_id}-99999999", f"{run_id}--1", ""):
                got = watch(srv.url, {"job": job_id}, headers={"Last-Event-ID": bad}, stop=lambda e: True)[0]
                assert got["event"] == "snapshot", bad
                assert got["data"]["seq"] == orch.store.seq
            recent = watch(srv.url, {"job": job_id}, stop=lambda e: True)[0]
            orch.store.log(job_id, "info", "one more")
            resumed = watch(srv.url, {"job": job_id, "last_event_id": recent["id"]}, stop=lambda e: True)[0]
            assert resumed["event"] == "log" and resumed["data"]["message"] == "one more"
    finally:
        gates.open_all()
        orch.shutdown(wait=False)


def test_after_a_server_restart_an_old_id_gets_a_fresh_snapshot(gates):
    port = free_port()
    before = Orchestrator(max_workers=2)
    before.define("mixed", mixed_definition(gates))
    job_id = before.start("mixed")
    with LiveServer(create_app(before), port=port) as srv:
        last = watch(srv.url, {"job": job_id}, stop=lambda e: True)[-1]
    before.shutdown(wait=False)
    after = Orchestrator(max_workers=2)  # a new process would start from an empty store
    after.define("mixed", mixed_definition(gates))
    new_job = after.start("mixed")
    try:
        with LiveServer(create_app(after), port=port) as srv:
            first = watch(srv.url, headers={"Last-Event-ID": last["id"]}, stop=lambda e: True)[0]
            assert first["event"] == "snapshot"
            assert [j["id"] for j in first["data"]["jobs"]] == [new_job]
    finally:
        gates.open_all()
        after.shutdown(wait=False)


def test_a_client_that_stops_reading_costs_bounded_memory_then_converges(gates):
    orch = Orchestrator(max_workers=2, replay_size=5000)
    orch.define("mixed", mixed_definition(gates))
    job_id = orch.start("mixed")
    try:
        with LiveServer(create_app(orch)) as srv:
            with httpx.stream("GET", srv.url + "/api/events", params={"job": job_id}, timeout=TIMEOUT) as response:
                events = sse_events(response)
                assert next(events)["event"] == "snapshot"
                tracemalloc.start()
                base = tracemalloc.get_traced_memory()[0]
                for n in range(100_000):  # the client reads nothing meanwhile
                    orch.store.log(job_id, "info", f"line {n:06d} " + "x" * 40)
                grown = tracemalloc.get_traced_memory()[0] - base
                tracemalloc.stop()
                # ring of 5,000 events (~1.5 KiB each with their log records) + socket buffers;
                # 100,000 queued events would be well over 100 MiB
                assert grown < 40 * 2**20, f"memory grew by {grown / 2**20:.1f} MiB"
                gates.open_all()
                received = []
                for event in events:
                    received.append(event)
                    if event["event"] == "end":
                        break
            assert any(e["event"] == "snapshot" for e in received), "a lagging client gets a fresh snapshot"
            seqs_increase([e for e in received if e["event"] != "snapshot"][-10:])
            assert folded(received, job_id) == orch.snapshot(job_id)["job"]
    finally:
        gates.open_all()
        orch.shutdown(wait=False)


@pytest.mark.skipif(shutil.which("curl") is None and not os.environ.get("STEPSTREAM_REQUIRE_BROWSER"),
                    reason="curl is not installed")
def test_curl_n_on_a_job_stream_exits_when_the_job_ends(orch, server):
    orch.define("quick", [Step("a", lambda ctx: [ctx.log("info", "hi") for _ in range(5)]),
                          Step("b", lambda ctx: None)])
    job_id = orch.start("quick")
    done = subprocess.run(["curl", "-sN", f"{server.url}/api/events?job={job_id}"],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0
    assert "event: snapshot" in done.stdout and done.stdout.rstrip().endswith('"status":"completed"}')
    assert "event: end" in done.stdout


def test_serve_exits_promptly_on_sigint_with_streams_open(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "stepstream", "serve", "--demo", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                            env=cli_env())
    streams = []
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:  # wait until it accepts connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.05)  # nothing to await on another process's socket
        clients = [httpx.Client(timeout=TIMEOUT) for _ in range(3)]
        for client in clients:
            response = client.send(client.build_request("GET", f"http://127.0.0.1:{port}/api/events"), stream=True)
            assert next(sse_events(response))["event"] == "snapshot"
            streams.append((client, response))
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)
        stopped_in = time.monotonic() - started
        output = proc.stdout.read() if proc.stdout else ""
        assert proc.returncode in (0, 130), output
        assert "Traceback" not in output and "Exception" not in output, output
        assert stopped_in < 10, f"took {stopped_in:.1f} s"
    finally:
        for client, response in streams:
            response.close()
            client.close()
        if proc.poll() is None:
            proc.kill()


def test_an_idle_stream_gets_a_keep_alive_comment_every_ping_seconds(orch):
    with LiveServer(create_app(orch, ping=0.2)) as srv, \
            httpx.stream("GET", srv.url + "/api/events", timeout=TIMEOUT) as response:
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        comments, started = 0, None
        for line in response.iter_lines():
            if line.startswith("event: snapshot"):
                started = time.monotonic()
            elif line.startswith(":") and started is not None:
                comments += 1
                if comments == 5:
                    break
        took = time.monotonic() - started
        assert 0.6 < took < 3, f"5 keep-alives took {took:.2f} s at ping=0.2"


def test_a_head_request_gets_the_stream_headers_and_no_body(server):
    response = httpx.head(server.url + "/api/events", timeout=TIMEOUT)
    assert response.status_code == 200 and response.content == b""
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"


def test_clients_that_leave_are_let_go_and_an_idle_stream_holds_two_tasks(orch):
    """Each idle stream is the server's task for its request plus one that waits for the client
    to leave: keep-alives and shutdown are the hub's, not tasks of each connection."""
    app = create_app(orch, ping=0.05)
    hub = app.state.hub

    def tasks() -> int:
        async def count() -> int:
            return len(asyncio.all_tasks())
        return asyncio.run_coroutine_threadsafe(count(), hub._loop).result(TIMEOUT)

    with LiveServer(app) as srv, contextlib.ExitStack() as streams:
        def open_stream():  # the events iterator is kept: collecting it would close the response
            events = sse_events(streams.enter_context(httpx.stream("GET", srv.url + "/api/events", timeout=TIMEOUT)))
            assert next(events)["event"] == "snapshot"
            return events

        kept = [open_stream()]  # the loop and the hub are up
        before = tasks()
        kept += [open_stream() for _ in range(20)]
        assert hub.connections == 21
        assert (tasks() - before) / 20 <= 2
        streams.close()
        until(lambda: hub.connections == 0, TIMEOUT, "the streams of clients that left to be let go")
        until(lambda: tasks() <= before - 2, TIMEOUT, "a stream's tasks to end with its client")


def test_a_stream_whose_snapshot_storage_does_not_give_keeps_its_keep_alives(orch):
    app = create_app(orch, ping=0.2, retry_ms=50)
    real = orch.store.stream_snapshot
    failing = threading.Event()
    failing.set()

    def snapshot(*args, **kwargs):
        if failing.is_set():
            raise StorageUnavailable("storage is down (test)")
        return real(*args, **kwargs)

    orch.store.stream_snapshot = snapshot
    with LiveServer(app) as srv, httpx.stream("GET", srv.url + "/api/events", timeout=TIMEOUT) as response:
        comments = 0
        for line in response.iter_lines():
            if line.startswith(":"):
                comments += 1
                if comments == 3:
                    failing.clear()  # storage is back
            elif line.startswith("event:"):
                assert line == "event: snapshot" and comments >= 3
                break
