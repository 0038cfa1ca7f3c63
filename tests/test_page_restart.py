"""A page left open across a server restart on the same SQLite database converges without a
reload: it shows `reconnecting`, then `live`, resumes the stream exactly after the last event it
had (no fresh `snapshot`: it applies exactly the events a resuming client gets), shows the
interrupted job as the API has it, reaches the server's seq, and still knows (and deep-links)
a job that finished before the restart.

Two ways the first server goes away: a graceful `shutdown(wait=False)` (the held job is
cancelled and settled as interrupted before the database closes), and a crash (only the journal
is closed; the next orchestrator settles the job as failed when it opens the database).

Fixtures (`browser`, `page`) and the held job come from tests/test_page.py.
"""

# ruff: noqa: F811

from __future__ import annotations

import httpx
import pytest

from harness.live import LiveServer, sse_events
from stepstream import Orchestrator, Step
from stepstream.server import create_app
from tests.test_page import (  # noqa: F401  (fixtures `browser`, `page`)
    CRAWL_HELD,
    CRAWL_HELD_LOGS,
    TIMEOUT,
    WORKERS,
    StrictCsp,
    api_rows,
    browser,
    connection,
    expect_final,
    expect_page_at,
    held_at,
    held_definition,
    open_job,
    page,
)

pytest.importorskip("playwright")
from playwright.sync_api import Page, expect  # noqa: E402

pytestmark = pytest.mark.browser
expect.set_options(timeout=15_000)

INTERRUPTED = "interrupted: the server stopped while this job ran"

# Installed once the page is live: every event the page's store applies from the all-jobs
# stream (type, seq, id), and every state the connection indicator shows.
SPY_JS = """() => {
    const store = stepstream.store, apply = store.applyEvent.bind(store);
    window.__applied = [];
    store.applyEvent = (type, data, id, at) => {
        window.__applied.push([type, data.seq, id]);
        return apply(type, data, id, at);
    };
    window.__states = [];
    const el = document.querySelector('[data-connection]');
    new MutationObserver(() => {
        const state = el.dataset.connection;
        if (window.__states[window.__states.length - 1] !== state) window.__states.push(state);
    }).observe(el, {attributes: true, attributeFilter: ['data-connection']});
}"""


def serve(orch: Orchestrator, port: int | None = None) -> LiveServer:
    return LiveServer(StrictCsp(create_app(orch, retry_ms=300)), port=port).start()


def snapshot_of(base: str, job_id: str) -> dict:
    response = httpx.get(f"{base}/api/jobs/{job_id}", timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


def resumed_events(base: str, last_event_id: str, until_seq: int) -> list[list]:
    """What a client resuming the all-jobs stream after `last_event_id` receives, up to the
    event with seq `until_seq`: [type, seq, id] per event."""
    got: list[list] = []
    with httpx.stream("GET", f"{base}/api/events", headers={"Last-Event-ID": last_event_id},
                      timeout=TIMEOUT) as response:
        assert response.status_code == 200
        for event in sse_events(response):
            got.append([event["event"], event["data"]["seq"], event["id"]])
            if event["data"]["seq"] >= until_seq:
                return got
    raise AssertionError(f"the stream ended before seq {until_seq}: {got}")


@pytest.mark.parametrize("stop", ["shutdown", "crash"])
def test_a_page_open_across_a_restart_resumes_exactly_and_converges(stop, tmp_path, gates, page: Page):
    db = tmp_path / "h.db"

    def define(orch: Orchestrator) -> None:
        orch.define("held", held_definition(gates))
        orch.define("quick", [Step("only", lambda ctx: ctx.log("info", "quick did its work"))])

    orch = Orchestrator(max_workers=WORKERS, db=db)
    orch2 = None
    define(orch)
    srv = serve(orch)
    srv2 = None
    try:
        old = orch.start("quick")
        old_final = orch.wait(old, TIMEOUT)
        job_id = orch.start("held")
        events_seen: list = []  # the page's event stream requests
        page.on("request", lambda r: "/api/events" in r.url and events_seen.append(r))
        page.goto(srv.url + "/")
        expect(connection(page)).to_have_attribute("data-connection", "live")
        open_job(page, job_id)  # as a reader does: no job opens by itself
        expect_page_at(page, held_at(orch, job_id, "crawl", CRAWL_HELD, CRAWL_HELD_LOGS))
        expect(page.locator(f'[data-job="{old}"]')).to_have_attribute("data-status", "completed")

        page.evaluate(SPY_JS)
        page.evaluate("window.__same_page = true")  # gone if anything reloads the page
        last_id = page.evaluate("stepstream.store.lastEventId")
        before_seq = int(connection(page).get_attribute("data-seq"))
        assert last_id.endswith(f"-{before_seq}")
        assert page.evaluate("stepstream.store.epoch") == 1  # one snapshot so far
        requests_before = len(events_seen)

        srv.stop()
        expect(connection(page)).to_have_attribute("data-connection", "reconnecting")
        if stop == "shutdown":
            orch.shutdown(wait=False)  # the held job is settled (cancelled) and written
        else:
            orch.store.close()  # a crash: the database keeps the job as running

        orch2 = Orchestrator(max_workers=WORKERS, db=db)
        define(orch2)
        srv2 = serve(orch2, port=srv.port)
        expect(connection(page)).to_have_attribute("data-connection", "live")

        # The page converges to what the API says now, without a reload.
        final = snapshot_of(srv2.url, job_id)
        assert final["job"]["status"] == ("cancelled" if stop == "shutdown" else "failed")
        if stop == "crash":
            assert final["job"]["error"].endswith(INTERRUPTED)
        assert all(s["status"] != "running" for s in final["job"]["steps"])
        expect_final(page, final)
        health = httpx.get(f"{srv2.url}/api/health", timeout=TIMEOUT).json()
        expect(connection(page)).to_have_attribute("data-seq", str(health["seq"]))
        assert health["seq"] > before_seq  # the settling happened after the page lost the server
        assert api_rows(snapshot_of(srv2.url, job_id)) == api_rows(final)  # nothing moved meanwhile

        # It resumed exactly: the stream after the restart asked for what came after the page's
        # last event, applied no snapshot, and applied exactly what a resuming client gets.
        resumed = events_seen[requests_before:]
        assert resumed, "the page never reconnected its stream"
        asked = [r.all_headers().get("last-event-id") or httpx.URL(r.url).params.get("last_event_id")
                 for r in resumed]
        assert set(asked) == {last_id}, asked
        assert page.evaluate("stepstream.store.epoch") == 1, "the page applied a fresh snapshot"
        applied = page.evaluate("window.__applied")
        assert applied, "the page applied nothing after the restart"
        assert applied[0][0] != "snapshot", applied[0]
        assert applied == resumed_events(srv2.url, last_id, health["seq"])
        assert page.evaluate("stepstream.store.lastEventId") == applied[-1][2]
        states = page.evaluate("window.__states")
        assert states[0] == "reconnecting" and states[-1] == "live", states

        # The job that finished before the restart is still shown, as the API has it.
        old_now = snapshot_of(srv2.url, old)
        assert old_now["job"]["steps"] == old_final["job"]["steps"]
        expect(page.locator(f'[data-job="{old}"]')).to_have_attribute("data-status", "completed")
        assert page.evaluate("window.__same_page") is True

        # And a deep link to it after the restart opens it.
        page.goto(f"{srv2.url}/?job={old}")
        expect(page.locator(f'[data-job="{old}"]')).to_have_attribute("data-expanded", "true")
        expect_final(page, old_now)
    finally:
        gates.open_all()
        for server in (srv2, srv):
            if server is not None:
                server.stop()
        for o in (orch2, orch):
            if o is not None:
                o.shutdown(wait=False)


def test_a_page_opened_after_a_restart_lists_the_jobs_that_finished_before_it(tmp_path, page: Page):
    db = tmp_path / "h.db"
    quick = [Step("only", lambda ctx: ctx.log("info", "quick did its work"))]
    with Orchestrator(max_workers=1, db=db) as orch:
        orch.define("quick", quick)
        old = orch.start("quick")
        orch.wait(old, TIMEOUT)
    orch2 = Orchestrator(max_workers=1, db=db)
    orch2.define("quick", quick)
    srv = serve(orch2)
    try:
        seq = httpx.get(f"{srv.url}/api/health", timeout=TIMEOUT).json()["seq"]
        page.goto(srv.url + "/")
        expect(connection(page)).to_have_attribute("data-seq", str(seq))  # the snapshot is applied
        page.evaluate("() => new Promise(done => requestAnimationFrame(() => done()))")  # and rendered
        assert page.locator(f'[data-job="{old}"]').count() == 1, page.inner_text("#jobs-empty")
    finally:
        srv.stop()
        orch2.shutdown(wait=False)
