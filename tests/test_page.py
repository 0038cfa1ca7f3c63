"""The page in a real Chromium: step rows that match the API, live logs, reconnecting after a
restart, text-only logs, mounting under a prefix, and the start form with its cancel button.

Jobs are held mid-run with gates, and "quiet" states are reached when the store says so (a
listener on the store), so every comparison is against a state that no longer moves. Every page
runs under the strict Content-Security-Policy (added by `StrictCsp` where the app does not send
it) and a test fails on any violation the browser reports.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount

from harness.live import LiveServer
from stepstream import Orchestrator, Step
from stepstream.server import create_app
from tests.browser import ARTIFACTS, LAUNCH_ARGS, _unavailable, find_chromium
from tests.conftest import Gates

pytest.importorskip("playwright")
from playwright.sync_api import Page, expect  # noqa: E402

pytestmark = pytest.mark.browser
expect.set_options(timeout=15_000)
TIMEOUT = 20
WORKERS = 4  # the quiet states below count on exactly this many worker threads
COUNTS = ("total", "pending", "running", "completed", "failed", "cancelled")
HOSTILE = '<img src=x onerror="window.__pwned=1;alert(1)">'


CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
)


class StrictCsp:
    """Wraps an app: responses without a Content-Security-Policy get the page's strict one."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_csp(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"content-security-policy" for name, _ in headers):
                    headers.append((b"content-security-policy", CSP.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_csp)


_shared: dict = {}  # the one Chromium of the session, whichever module's fixture starts it


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """One headless Chromium for every page test module. (Each module importing this fixture
    gets its own session fixture; playwright's sync API can run only one at a time.)"""
    started = "browser" not in _shared
    if started:
        path, reason = find_chromium()
        if path is None:
            _unavailable(reason)
        from playwright.sync_api import sync_playwright

        _shared["playwright"] = sync_playwright()
        _shared["browser"] = (
            _shared["playwright"].start().chromium.launch(executable_path=path, headless=True, args=LAUNCH_ARGS)
        )
    yield _shared["browser"]
    if started:
        _shared.pop("browser").close()
        _shared.pop("playwright").__exit__(None, None, None)


def watch_page(page: Page) -> list[str]:
    """Problems the page reports from now on: uncaught errors and CSP violations."""
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    page.on("console", lambda message: "Content Security Policy" in message.text and problems.append(message.text))
    return problems


@pytest.fixture
def page(browser) -> Iterator[Page]:
    """A fresh page in its own context (1280 px wide); the test fails if the page throws or
    the browser reports a Content-Security-Policy violation."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    p = context.new_page()
    problems = watch_page(p)
    yield p
    context.close()
    assert not problems, f"the page reported: {problems}"


@pytest.fixture
def orch():
    o = Orchestrator(max_workers=WORKERS)
    yield o
    o.shutdown(wait=False)


@pytest.fixture
def server(orch):
    with LiveServer(StrictCsp(create_app(orch))) as srv:
        yield srv


# ---------------------------------------------------------------- a job that holds still


def held_definition(gates: Gates) -> list[Step]:
    """crawl (crawler style: pages found by parent_id, each finding 3 leaves that wait for gate
    'crawl') -> agents (agent style: 5 async children linked by step_id; the handler waits for
    'agents.note', logs, then waits for 'agents') -> report."""

    def leaf(ctx, n):
        ctx.log("info", f"leaf {n} waiting")
        gates["crawl"].wait(TIMEOUT)
        ctx.log("debug", f"leaf {n} done")

    def listing(ctx, n):
        ctx.log("info", f"listing {n} found 3 leaves")
        for k in range(3):
            ctx.spawn(leaf, f"{n}.{k}")

    def crawl(ctx):
        for n in range(2):
            ctx.spawn(listing, n)

    async def agent(ctx, n):
        ctx.log("warning" if n == 0 else "info", f"agent {n} thinking")
        if n == 0:
            raise ValueError("agent 0 answered nonsense")
        if n > 1:
            await asyncio.to_thread(gates["agents"].wait, TIMEOUT)

    def agents(ctx):
        for n in range(5):
            ctx.orchestrator.spawn(agent, n, step_id=ctx.step_id)
        ctx.log("info", "asked 5 agents")
        gates["agents.note"].wait(TIMEOUT)
        ctx.log("info", "agents half way")
        gates["agents"].wait(TIMEOUT)

    def report(ctx):
        ctx.log("info", "report written")

    return [Step("crawl", crawl), Step("agents", agents), Step("report", report)]


# With WORKERS threads: 2 listings completed, 4 leaves running (every thread), 2 pending.
CRAWL_HELD = {"total": 8, "pending": 2, "running": 4, "completed": 2, "failed": 0, "cancelled": 0}
CRAWL_HELD_LOGS = 1 + 2 + 4  # "step crawl started", listings, running leaves
# Agent 0 failed, agent 1 completed, 2..4 wait on the event loop; the handler waits too.
AGENTS_HELD = {"total": 5, "pending": 0, "running": 3, "completed": 1, "failed": 1, "cancelled": 0}
AGENTS_HELD_LOGS = 1 + 5 + 1 + 1  # started, agents, its failure line, the handler's line


def step_of(snap: dict, name: str) -> dict:
    return next(s for s in snap["job"]["steps"] if s["name"] == name)


def wait_for(orch: Orchestrator, job_id: str, predicate: Callable[[dict], bool]) -> dict:
    """The job's snapshot once `predicate` holds, woken by the store's change listener."""
    reached = threading.Event()

    def check() -> None:
        if predicate(orch.snapshot(job_id)):
            reached.set()

    unsubscribe = orch.store.subscribe(check)
    try:
        check()
        if not reached.wait(TIMEOUT):
            raise AssertionError(f"job never reached the expected state: {orch.snapshot(job_id)}")
    finally:
        unsubscribe()
    return orch.snapshot(job_id)


def held_at(orch: Orchestrator, job_id: str, step: str, progress: dict, log_count: int) -> dict:
    """Wait until `step` holds still at `progress` with `log_count` lines; its snapshot."""
    snap = wait_for(
        orch, job_id, lambda s: step_of(s, step)["progress"] == progress and step_of(s, step)["log_count"] == log_count
    )
    assert step_of(snap, step)["status"] == "running"
    return snap


# ---------------------------------------------------------------- reading the page

COUNTS_JS = "[" + ", ".join(f"'{k}'" for k in COUNTS) + "]"
ROWS_JS = """jobId => [...document.querySelectorAll(`[data-job="${jobId}"] [data-step]`)].map(el => {
    const bar = el.querySelector('[role=progressbar]');
    return {name: el.dataset.step, status: el.dataset.status, log_count: Number(el.dataset.logCount),
            progress: Object.fromEntries(COUNTS.map(k => [k, Number(el.dataset[k])])),
            bar: [Number(bar.getAttribute('aria-valuenow')), Number(bar.getAttribute('aria-valuemax'))]};
})""".replace("COUNTS", COUNTS_JS)


def page_rows(page: Page, job_id: str) -> list[dict]:
    return page.evaluate(ROWS_JS, job_id)


def api_rows(snap: dict) -> list[dict]:
    rows = []
    for s in snap["job"]["steps"]:
        p = s["progress"]
        rows.append(
            {
                "name": s["name"],
                "status": s["status"],
                "log_count": s["log_count"],
                "progress": p,
                "bar": [p["completed"] + p["failed"] + p["cancelled"], p["total"]],
            }
        )
    return rows


def connection(page: Page):
    return page.locator("[data-connection]")


def expect_page_at(page: Page, snap: dict) -> None:
    """Once the page shows the snapshot's seq, its step rows equal the snapshot's steps."""
    expect(connection(page)).to_have_attribute("data-seq", str(snap["seq"]))
    assert page_rows(page, snap["job"]["id"]) == api_rows(snap)


def expect_final(page: Page, final: dict) -> None:
    """The page converges to the final snapshot exactly (the stream's last change for the job)."""
    job_id = final["job"]["id"]
    expect(page.locator(f'[data-job="{job_id}"]')).to_have_attribute("data-status", final["job"]["status"])
    expected = api_rows(final)
    try:
        page.wait_for_function(
            f"expected => JSON.stringify(({ROWS_JS})({job_id!r})) === JSON.stringify(expected)",
            arg=expected,
            timeout=15_000,
        )
    except Exception:
        assert page_rows(page, job_id) == expected  # shows the difference
        raise


def step_row(page: Page, job_id: str, step: str):
    return page.locator(f'[data-job="{job_id}"] [data-step="{step}"]')


def open_job(page: Page, job_id: str):
    """Open a job as a reader does, with a click on its heading (no job opens by itself)."""
    job = page.locator(f'[data-job="{job_id}"]')
    job.locator(":scope > .job-head .toggle").click()
    expect(job).to_have_attribute("data-expanded", "true")
    return job


# ---------------------------------------------------------------- tests


def test_step_rows_equal_the_api_snapshot_while_held_and_at_the_end(orch, server, gates, page):
    orch.define("held", held_definition(gates))
    job_id = orch.start("held")
    page.goto(server.url + "/")
    expect(connection(page)).to_have_attribute("data-connection", "live")

    older = held_at(orch, job_id, "crawl", CRAWL_HELD, CRAWL_HELD_LOGS)
    expect_page_at(page, older)  # crawler style

    gates["crawl"].set()
    gates["agents.note"].set()
    held = held_at(orch, job_id, "agents", AGENTS_HELD, AGENTS_HELD_LOGS + 1)
    expect_page_at(page, held)  # agent style

    # A reconcile that answers with an older snapshot (a slow response) changes nothing.
    page.route(f"**/api/jobs/{job_id}", lambda route: route.fulfill(json=older))
    with page.expect_request_finished(lambda request: request.url.endswith(f"/api/jobs/{job_id}")):
        page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")  # reconciles
    page.wait_for_function("() => stepstream.store.fetching.size === 0")  # the page's in-flight snapshot requests
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => done()))")
    assert page_rows(page, job_id) == api_rows(held)
    page.unroute(f"**/api/jobs/{job_id}")

    gates["agents"].set()
    final = orch.wait(job_id, TIMEOUT)
    assert final["job"]["status"] == "completed"
    expect_final(page, final)
    # The manager's totals are on the job row only.
    job_counts = page.locator(f'[data-job="{job_id}"] > .job-head .count b').all_text_contents()
    assert [int(n) for n in job_counts] == [final["job"]["progress"][k] for k in COUNTS]


def test_rows_and_the_running_steps_log_update_live_without_reload(orch, server, gates, page):
    orch.define("held", held_definition(gates))
    job_id = orch.start("held")
    page.goto(server.url + "/")
    open_job(page, job_id)
    page.evaluate("window.__same_page = true")  # gone if anything reloads the page

    crawl, agents = step_row(page, job_id, "crawl"), step_row(page, job_id, "agents")
    held_at(orch, job_id, "crawl", CRAWL_HELD, CRAWL_HELD_LOGS)
    expect(crawl).to_have_attribute("data-running", "4")
    expect(crawl).to_have_attribute("data-status", "running")
    expect(crawl.locator(".log li[data-seq]")).to_have_count(CRAWL_HELD_LOGS)  # the running step's lines

    gates["crawl"].set()
    held_at(orch, job_id, "agents", AGENTS_HELD, AGENTS_HELD_LOGS)
    expect(crawl).to_have_attribute("data-status", "completed")
    expect(crawl).to_have_attribute("data-completed", "8")
    expect(agents).to_have_attribute("data-status", "running")
    expect(agents.locator(".log li[data-seq]")).to_have_count(AGENTS_HELD_LOGS)
    expect(agents).to_have_attribute("data-log-count", str(AGENTS_HELD_LOGS))

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "running-job.png"), full_page=True)

    gates["agents.note"].set()  # one more line while the step still runs
    expect(agents.locator(".log li", has_text="agents half way")).to_have_count(1)
    expect(agents).to_have_attribute("data-log-count", str(AGENTS_HELD_LOGS + 1))
    expect(agents).to_have_attribute("data-status", "running")

    gates["agents"].set()
    expect_final(page, orch.wait(job_id, TIMEOUT))
    assert page.evaluate("window.__same_page") is True


class Outage:
    """Wraps an app; while `refuse` > 0 the event stream answers 503 (a proxy during a
    restart), which makes the browser give up reconnecting by itself."""

    def __init__(self, app) -> None:
        self.app = app
        self.refuse = 0
        self.refused = 0

    async def __call__(self, scope, receive, send) -> None:
        if self.refuse and scope["type"] == "http" and scope["path"].endswith("/api/events"):
            self.refuse -= 1
            self.refused += 1
            await PlainTextResponse("restarting", status_code=503)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def test_reconnects_after_a_server_restart_and_converges(orch, gates, page):
    orch.define("held", held_definition(gates))
    outage = Outage(StrictCsp(create_app(orch, retry_ms=300)))
    server = LiveServer(outage).start()
    try:
        job_id = orch.start("held")
        page.goto(server.url + "/")
        open_job(page, job_id)
        expect_page_at(page, held_at(orch, job_id, "crawl", CRAWL_HELD, CRAWL_HELD_LOGS))
        page.evaluate("window.__same_page = true")

        server.stop()
        expect(connection(page)).to_have_attribute("data-connection", "reconnecting")
        gates["crawl"].set()  # the job moves on while the page is cut off
        gates["agents.note"].set()
        snap = held_at(orch, job_id, "agents", AGENTS_HELD, AGENTS_HELD_LOGS + 1)

        outage.refuse = 2  # the first retry (after the server's `retry:`) and the first backoff retry both fail
        server.start()
        expect(connection(page)).to_have_attribute("data-connection", "live")
        assert outage.refused == 2
        expect_page_at(page, snap)
        expect(step_row(page, job_id, "agents").locator(".log li", has_text="agents half way")).to_have_count(1)
        assert page.evaluate("window.__same_page") is True

        gates["agents"].set()
        expect_final(page, orch.wait(job_id, TIMEOUT))
    finally:
        server.stop()


def test_log_lines_and_errors_are_text_and_run_nothing(orch, server, gates, page):
    def hostile(ctx):
        ctx.log("info", HOSTILE)
        ctx.log("warning", "<script>window.__pwned=2</script>")
        gates["hostile"].wait(TIMEOUT)
        raise ValueError(HOSTILE)

    orch.define("hostile", [Step("hostile", hostile)])
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    job_id = orch.start("hostile", {"note": HOSTILE})
    page.goto(server.url + "/")
    open_job(page, job_id)
    row = step_row(page, job_id, "hostile")
    expect(row.locator(".log li", has_text=HOSTILE)).to_have_count(1)

    gates["hostile"].set()
    expect(page.locator(f'[data-job="{job_id}"]')).to_have_attribute("data-status", "failed")
    expect(row.locator(".error")).to_have_text(f"ValueError: {HOSTILE}")
    assert page.locator("#jobs img, #jobs script").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert dialogs == []


def test_works_mounted_under_a_prefix(orch, gates, page):
    orch.define("held", held_definition(gates))
    host = StrictCsp(Starlette(routes=[Mount("/ops/queue", app=create_app(orch))]))
    with LiveServer(host) as server:
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        job_id = orch.start("held")
        page.goto(server.url + "/ops/queue")  # the app redirects to add the trailing slash
        expect(connection(page)).to_have_attribute("data-connection", "live")
        expect(page.locator("select[name=definition] option[value=held]")).to_have_count(1)
        open_job(page, job_id)
        held_at(orch, job_id, "crawl", CRAWL_HELD, CRAWL_HELD_LOGS)
        expect(step_row(page, job_id, "crawl").locator(".log li[data-seq]")).to_have_count(CRAWL_HELD_LOGS)

        gates.open_all()
        expect_final(page, orch.wait(job_id, TIMEOUT))
    assert requested and all(url.startswith(server.url + "/ops/queue") for url in requested), requested


def test_start_a_job_from_the_form_and_cancel_it_with_the_button(orch, server, gates, page):
    orch.define("held", held_definition(gates))
    page.goto(server.url + "/")
    expect(connection(page)).to_have_attribute("data-connection", "live")
    page.select_option("select[name=definition]", "held")

    page.fill("textarea[name=params]", "{size: 3")
    page.get_by_role("button", name="Start").click()
    expect(page.locator(".form-message")).to_contain_text("not valid JSON")
    assert orch.store.list_managers()["jobs"] == []

    page.fill("textarea[name=params]", '{"size": 3}')
    page.get_by_role("button", name="Start").click()
    job = page.locator("[data-job]")
    expect(job).to_have_count(1)
    expect(job).to_have_attribute("data-status", "running")
    job_id = job.get_attribute("data-job")
    assert orch.snapshot(job_id)["job"]["params"] == {"size": 3}

    cancel = job.locator("[data-action=cancel]")
    cancel.focus()
    page.keyboard.press("Enter")  # keyboard-usable: asks first, the safe answer focused
    expect(job.get_by_role("button", name="Keep running")).to_be_focused()
    page.keyboard.press("Shift+Tab")
    expect(job.get_by_role("button", name="Yes, cancel it")).to_be_focused()
    page.keyboard.press("Enter")
    expect(job).to_have_attribute("data-status", "cancelled")
    expect(cancel).to_be_hidden()
    assert orch.snapshot(job_id)["job"]["status"] == "cancelled"
    gates.open_all()
    final = orch.wait(job_id, TIMEOUT)
    expect_final(page, final)
    assert step_of(final, "agents")["status"] == "skipped"
