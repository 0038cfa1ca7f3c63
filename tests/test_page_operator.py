"""The page's operator features in a real Chromium, under the strict Content-Security-Policy:
collapsing, deep links and history, finding any job, times that survive a wrong browser clock,
failures with tracebacks, cancel / rerun / delete / download, live children as a tree, a
phone-sized viewport, and a page seq that reaches the server's.

Fixtures (`browser`, `page`, `server`, `orch`) and the held job come from tests/test_page.py;
the tests' parameters shadow those imported names, as pytest wants.
"""

# ruff: noqa: F811

from __future__ import annotations

import re
from datetime import datetime

import pytest

from stepstream import Orchestrator, Step
from tests.browser import ARTIFACTS
from tests.test_page import (  # noqa: F401  (fixtures `browser`, `page`, `server`, `orch`)
    AGENTS_HELD,
    AGENTS_HELD_LOGS,
    CRAWL_HELD,
    CRAWL_HELD_LOGS,
    HOSTILE,
    TIMEOUT,
    browser,
    connection,
    held_at,
    held_definition,
    open_job,
    orch,
    page,
    server,
    step_of,
    step_row,
    watch_page,
)

pytest.importorskip("playwright")
from playwright.sync_api import Page, expect  # noqa: E402

pytestmark = pytest.mark.browser
expect.set_options(timeout=15_000)


def define_quick(orch: Orchestrator, name: str = "quick", fail: bool = False) -> None:
    """One step that logs two lines (and raises, if `fail`)."""

    def only(ctx):
        ctx.log("info", f"{name} did its work")
        ctx.log("warning", f"{name} is done")
        if fail:
            raise ValueError(f"{name} failed on purpose")

    orch.define(name, [Step("only", only)])


def finished(orch: Orchestrator, definition: str, n: int) -> list[str]:
    """Start `n` jobs one after the other; their ids once each has finished."""
    ids = []
    for _ in range(n):
        ids.append(orch.start(definition))
        orch.wait(ids[-1], TIMEOUT)
    return ids


def job_el(page: Page, job_id: str):
    return page.locator(f'[data-job="{job_id}"]')


def toggle(page: Page, job_id: str):
    return job_el(page, job_id).locator(":scope > .job-head .toggle")


def shown_ids(page: Page) -> list[str]:
    return page.eval_on_selector_all("[data-job]", "els => els.map(el => el.dataset.job)")


def seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# ---------------------------------------------------------------- expanding and deep links


def test_collapsing_a_job_hides_its_steps(orch, server, gates, page):
    orch.define("held", held_definition(gates))
    job_id = orch.start("held")
    page.goto(server.url + "/")
    job, crawl = job_el(page, job_id), step_row(page, job_id, "crawl")
    expect(job).to_have_attribute("data-expanded", "false")  # nothing opens by itself
    expect(crawl).to_be_hidden()
    toggle(page, job_id).click()
    expect(job).to_have_attribute("data-expanded", "true")
    expect(crawl).to_be_visible()

    toggle(page, job_id).click()
    expect(job).to_have_attribute("data-expanded", "false")
    expect(crawl).to_be_hidden()
    expect(job.locator("[data-step]")).to_have_count(3)  # still on the DOM for tools, not shown

    toggle(page, job_id).click()
    expect(job).to_have_attribute("data-expanded", "true")
    expect(crawl).to_be_visible()


def test_a_deep_link_opens_any_job_and_history_follows_the_opened_job(orch, server, page):
    define_quick(orch)
    old, *_, newer = finished(orch, "quick", 22)  # the stream's snapshot carries the 20 latest
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))

    page.goto(f"{server.url}/?job={old}")
    expect(job_el(page, old)).to_have_attribute("data-expanded", "true")
    expect(step_row(page, old, "only")).to_be_visible()
    expect(step_row(page, old, "only")).to_have_attribute("data-status", "completed")
    assert f"{server.url}/api/jobs/{old}" in requested  # not in the stream: read by itself

    toggle(page, newer).click()  # opening a job puts it in the URL
    expect(page).to_have_url(f"{server.url}/?job={newer}")
    expect(job_el(page, newer)).to_have_attribute("data-expanded", "true")

    page.go_back()
    expect(page).to_have_url(f"{server.url}/?job={old}")
    expect(job_el(page, old)).to_have_attribute("data-expanded", "true")
    expect(job_el(page, newer)).to_have_attribute("data-expanded", "false")

    page.go_forward()
    expect(job_el(page, newer)).to_have_attribute("data-expanded", "true")
    expect(job_el(page, old)).to_have_attribute("data-expanded", "false")

    toggle(page, newer).click()  # closing it takes it out of the URL
    expect(page).to_have_url(f"{server.url}/")
    expect(job_el(page, newer)).to_have_attribute("data-expanded", "false")

    step_id = orch.snapshot(old)["job"]["steps"][0]["id"]
    page.goto(f"{server.url}/?job={step_id}")  # a step's (or child's) id opens its manager job
    expect(page).to_have_url(f"{server.url}/?job={old}")
    expect(job_el(page, old)).to_have_attribute("data-expanded", "true")

    page.goto(f"{server.url}/?job=job_nonesuch")
    expect(page.locator(".list-message")).to_have_text("There is no job job_nonesuch.")


# ---------------------------------------------------------------- finding jobs


def test_find_any_job_by_id_prefix_status_and_definition_and_load_older(orch, server, page):
    define_quick(orch, "alpha")
    define_quick(orch, "beta", fail=True)
    betas = finished(orch, "beta", 2)  # the oldest jobs: not in the stream's snapshot
    alphas = finished(orch, "alpha", 23)
    everyone = betas + alphas
    listed: list[str] = []
    page.on("request", lambda request: "/api/jobs?" in request.url and listed.append(request.url))
    page.goto(server.url + "/")
    expect(connection(page)).to_have_attribute("data-connection", "live")
    expect(page.locator("[data-job]")).to_have_count(20)

    # Unfiltered, "load older" pages back through every job.
    page.locator(".load-older").click()
    expect(page.locator("[data-job]")).to_have_count(25)
    expect(page.locator(".load-older")).to_be_hidden()
    assert sorted(shown_ids(page)) == sorted(everyone)

    # An id prefix finds the oldest job and whatever shares the prefix.
    prefix = betas[0][:-1]
    page.fill("[data-filter=search]", prefix)
    page.press("[data-filter=search]", "Enter")
    expected = sorted(i for i in everyone if i.startswith(prefix))
    expect(page.locator("[data-job]")).to_have_count(len(expected))
    assert sorted(shown_ids(page)) == expected and betas[0] in expected
    page.fill("[data-filter=search]", "")
    page.press("[data-filter=search]", "Enter")

    page.select_option("[data-filter=status]", "failed")
    expect(page.locator("[data-job]")).to_have_count(2)
    assert sorted(shown_ids(page)) == sorted(betas)
    expect(page.locator("[data-job]").first).to_have_attribute("data-status", "failed")

    page.select_option("[data-filter=status]", "")
    page.select_option("[data-filter=definition]", "alpha")
    expect(page.locator("[data-job]")).to_have_count(23)
    assert sorted(shown_ids(page)) == sorted(alphas)

    assert any(f"q={prefix}" in url for url in listed), listed
    assert any("status=failed" in url for url in listed), listed
    assert any("definition=alpha" in url for url in listed), listed


def test_load_older_pages_with_the_cursor(orch, server, page):
    define_quick(orch, "alpha")
    alphas = finished(orch, "alpha", 45)
    listed: list[str] = []
    page.on("request", lambda request: "/api/jobs?" in request.url and listed.append(request.url))
    page.goto(server.url + "/")
    page.select_option("[data-filter=definition]", "alpha")
    expect(page.locator("[data-job]")).to_have_count(20)
    page.locator(".load-older").click()
    expect(page.locator("[data-job]")).to_have_count(40)
    page.locator(".load-older").click()
    expect(page.locator("[data-job]")).to_have_count(45)
    expect(page.locator(".load-older")).to_be_hidden()
    assert sorted(shown_ids(page)) == sorted(alphas)
    assert sum("cursor=" in url for url in listed) == 2, listed


# ---------------------------------------------------------------- time

SHIFT_CLOCK = """(() => {
  const shift = 3600 * 1000, Real = Date;  // the browser's clock runs an hour ahead of the server's
  class Shifted extends Real {
    constructor(...args) { if (args.length) super(...args); else super(Real.now() + shift); }
    static now() { return Real.now() + shift; }
  }
  window.Date = Shifted;
})();"""


def test_elapsed_and_eta_follow_the_servers_clock_not_the_browsers(orch, server, gates, page):
    page.add_init_script(SHIFT_CLOCK)
    orch.define("held", held_definition(gates))
    job_id = orch.start("held")
    held_at(orch, job_id, "crawl", CRAWL_HELD, CRAWL_HELD_LOGS)  # 2 of 8 children done, 6 left
    page.goto(server.url + "/")
    job, crawl = job_el(page, job_id), step_row(page, job_id, "crawl")
    expect(crawl).to_have_attribute("data-eta-s", re.compile(r"^\d"))

    first = float(job.get_attribute("data-elapsed-s"))
    assert 0 <= first < 60, first  # an hour off if the browser's clock were used
    page.wait_for_function(  # it ticks while the job runs
        "([id, before]) => Number(document.querySelector(`[data-job='${id}']`).dataset.elapsedS) >= before + 1",
        arg=[job_id, first],
    )
    step_elapsed = float(crawl.get_attribute("data-elapsed-s"))
    eta = float(crawl.get_attribute("data-eta-s"))
    assert 0 <= step_elapsed < 60 and 0 < eta < 600, (step_elapsed, eta)
    assert eta == pytest.approx(3 * step_elapsed, abs=1.5)  # 6 left at the rate of 2 done so far
    expect(crawl.locator(".eta")).to_have_text(re.compile(r"^~.+ left$"))
    assert step_row(page, job_id, "report").get_attribute("data-elapsed-s") is None  # not started

    gates.open_all()
    final = orch.wait(job_id, TIMEOUT)
    expect(job).to_have_attribute("data-status", "completed")
    expect(crawl).not_to_have_attribute("data-eta-s", re.compile(".*"))
    took = seconds(final["job"]["finished_at"]) - seconds(final["job"]["started_at"])
    assert float(job.get_attribute("data-elapsed-s")) == pytest.approx(took, abs=0.06)
    step = step_of(final, "crawl")
    took = seconds(step["finished_at"]) - seconds(step["started_at"])
    assert float(crawl.get_attribute("data-elapsed-s")) == pytest.approx(took, abs=0.06)
    expect(job.locator(".job-head .elapsed")).to_have_text(re.compile(r"^took \d"))


# ---------------------------------------------------------------- failures


def test_a_failure_shows_its_error_and_its_traceback_on_demand(orch, server, page):
    def broken_child(ctx):
        raise KeyError("missing <b>key</b>")

    def explode(ctx):
        ctx.spawn(broken_child)
        raise ValueError(HOSTILE)

    orch.define("explode", [Step("explode", explode), Step("after", lambda ctx: None)])
    job_id = orch.start("explode")
    final = orch.wait(job_id, TIMEOUT)
    step = step_of(final, "explode")
    assert step["status"] == "failed" and step["traceback"]

    page.goto(f"{server.url}/?job={job_id}")
    job, row = job_el(page, job_id), step_row(page, job_id, "explode")
    expect(job).to_have_attribute("data-status", "failed")
    expect(job.locator(".job-failure .error")).to_have_text(final["job"]["error"])
    row.locator(":scope > details > summary").click()
    failure = row.locator(".step-failure")
    expect(failure.locator(".error")).to_have_text(f"ValueError: {HOSTILE}")
    traceback = failure.locator("[data-traceback]")
    expect(traceback).to_be_hidden()  # on demand only
    failure.locator(".traceback > summary").click()
    expect(traceback).to_be_visible()
    expect(traceback).to_contain_text("Traceback (most recent call last)")
    assert traceback.text_content() == step["traceback"]

    row.locator(".children-toggle").click()
    child = row.locator("[data-child]")
    expect(child).to_have_count(1)
    expect(child).to_have_attribute("data-status", "failed")
    expect(child.locator(".child-error")).to_contain_text("KeyError")
    child.locator(".traceback > summary").click()
    expect(child.locator("[data-traceback]")).to_contain_text("missing <b>key</b>")
    assert page.locator("#jobs img, #jobs script, [data-traceback] *, .child-error b").count() == 0
    assert page.evaluate("window.__pwned") is None


# ---------------------------------------------------------------- actions


def mutations(page: Page) -> list[tuple[str, str, str | None]]:
    """(method, url, content type) of each mutating request the page makes from now on."""
    sent: list[tuple[str, str, str | None]] = []
    page.on(
        "request",
        lambda r: r.method in ("POST", "DELETE") and sent.append((r.method, r.url, r.headers.get("content-type"))),
    )
    return sent


def test_cancel_asks_first_and_mutations_are_json(orch, server, gates, page):
    orch.define("held", held_definition(gates))
    job_id = orch.start("held")
    sent = mutations(page)
    page.goto(server.url + "/")
    job = job_el(page, job_id)
    expect(job).to_have_attribute("data-status", "running")
    expect(job.locator("[data-action=delete]")).to_be_hidden()  # only finished jobs

    job.locator("[data-action=cancel]").click()
    confirm = job.locator(".confirm")
    expect(confirm).to_be_visible()
    expect(confirm).to_contain_text("Cancel this job?")
    job.get_by_role("button", name="Keep running").click()
    expect(confirm).to_be_hidden()
    assert sent == [] and orch.snapshot(job_id)["job"]["status"] == "running"

    job.locator("[data-action=cancel]").click()
    job.get_by_role("button", name="Yes, cancel it").click()
    expect(job).to_have_attribute("data-status", "cancelled")
    expect(job.locator("[data-action=cancel]")).to_be_hidden()
    gates.open_all()
    orch.wait(job_id, TIMEOUT)
    expect(job.locator("[data-action=delete]")).to_be_visible()
    assert sent == [("POST", f"{server.url}/api/jobs/{job_id}/cancel", "application/json")]


def test_rerun_starts_the_same_job_again_and_shows_it(orch, server, page):
    define_quick(orch)
    (job_id,) = finished(orch, "quick", 1)
    sent = mutations(page)
    page.goto(f"{server.url}/?job={job_id}")
    job_el(page, job_id).locator("[data-action=rerun]").click()
    expect(page.locator("[data-job]")).to_have_count(2)
    new_id = next(i for i in shown_ids(page) if i != job_id)
    assert orch.snapshot(new_id)["job"]["rerun_of"] == job_id
    expect(page).to_have_url(f"{server.url}/?job={new_id}")
    new = job_el(page, new_id)
    expect(new).to_have_attribute("data-expanded", "true")
    expect(job_el(page, job_id)).to_have_attribute("data-expanded", "false")
    expect(new.locator(".rerun-of")).to_have_text(f"Rerun of {job_id}")
    expect(new).to_have_attribute("data-status", "completed")
    assert sent == [("POST", f"{server.url}/api/jobs/{job_id}/rerun", "application/json")]

    new.locator(".rerun-of a").click()  # back to the original, in the URL too
    expect(page).to_have_url(f"{server.url}/?job={job_id}")
    expect(job_el(page, job_id)).to_have_attribute("data-expanded", "true")


def test_delete_removes_a_finished_job_from_every_open_page(orch, server, page):
    define_quick(orch)
    kept, doomed = finished(orch, "quick", 2)
    other = page.context.new_page()
    problems = watch_page(other)
    sent = mutations(page)
    for p in (page, other):
        p.goto(server.url + "/")
        expect(job_el(p, doomed)).to_have_count(1)

    job_el(page, doomed).locator("[data-action=delete]").click()
    expect(job_el(page, doomed).locator(".confirm")).to_contain_text("cannot be undone")
    job_el(page, doomed).get_by_role("button", name="Yes, delete it").click()
    expect(job_el(page, doomed)).to_have_count(0)
    expect(job_el(other, doomed)).to_have_count(0)  # by the stream's job_deleted
    expect(job_el(other, kept)).to_have_count(1)
    assert page.request.get(f"{server.url}/api/jobs/{doomed}").status == 404
    assert sent == [("DELETE", f"{server.url}/api/jobs/{doomed}", "application/json")]
    assert not problems, problems


def test_download_links_serve_the_whole_log_as_text(orch, server, page):
    def first(ctx):
        for n in range(3):
            ctx.log("info", f"first line {n}")

    def second(ctx):
        ctx.log("warning", "second says hi")

    orch.define("two", [Step("first", first), Step("second", second)])
    (job_id,) = finished(orch, "two", 1)
    page.goto(f"{server.url}/?job={job_id}")
    whole = job_el(page, job_id).locator(".job-head [data-action=download-logs]")
    expect(whole).to_have_attribute("href", f"api/jobs/{job_id}/logs?format=text")
    text = page.request.get(whole.evaluate("a => a.href")).text()
    assert all(f"first line {n}" in text for n in range(3)) and "second says hi" in text

    step_row(page, job_id, "second").locator(":scope > details > summary").click()
    one = step_row(page, job_id, "second").locator("[data-action=download-logs]")
    expect(one).to_have_attribute("href", f"api/jobs/{job_id}/logs?format=text&step=second")
    text = page.request.get(one.evaluate("a => a.href")).text()
    assert "second says hi" in text and "first line" not in text


# ---------------------------------------------------------------- children


def test_children_show_as_a_tree_with_errors_and_tracebacks(orch, server, gates, page):
    orch.define("held", held_definition(gates))
    job_id = orch.start("held")
    held_at(orch, job_id, "crawl", CRAWL_HELD, CRAWL_HELD_LOGS)
    page.goto(server.url + "/")
    open_job(page, job_id)
    crawl = step_row(page, job_id, "crawl")
    crawl.locator(".children-toggle").click()
    rows = crawl.locator("[data-child]")
    expect(rows).to_have_count(8)
    expect(crawl.locator('[data-child][data-status="running"]')).to_have_count(4)

    children = {c["id"]: c for c in orch.children(job_id, step="crawl", limit=100)["children"]}
    shown = rows.evaluate_all("rows => rows.map(r => [r.dataset.child, r.dataset.depth])")
    order = [child_id for child_id, _ in shown]
    assert sorted(order) == sorted(children)
    for child_id, depth in shown:  # each child below the job that spawned it, one level deeper
        parent = children[child_id]["parent_id"]
        if parent in children:
            assert order.index(parent) < order.index(child_id)
            assert int(depth) == int(dict(shown)[parent]) + 1
        assert int(depth) == children[child_id]["depth"]

    gates["crawl"].set()
    gates["agents.note"].set()
    held_at(orch, job_id, "agents", AGENTS_HELD, AGENTS_HELD_LOGS + 1)
    expect(crawl.locator('[data-child][data-status="completed"]')).to_have_count(8)
    agents = step_row(page, job_id, "agents")
    agents.locator(":scope > details > summary").click()
    agents.locator(".children-toggle").click()
    expect(agents.locator("[data-child]")).to_have_count(5)
    failed = agents.locator('[data-child][data-status="failed"]')
    expect(failed.locator(".child-error")).to_contain_text("agent 0 answered nonsense")
    failed.locator(".traceback > summary").click()
    expect(failed.locator("[data-traceback]")).to_contain_text("ValueError: agent 0 answered nonsense")
    expect(agents).to_have_attribute("data-eta-s", re.compile(r"^\d"))
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "operator-1280.png"), full_page=True)

    gates.open_all()
    orch.wait(job_id, TIMEOUT)
    expect(agents.locator('[data-child][data-status="completed"]')).to_have_count(4)
    report = step_row(page, job_id, "report")
    report.locator(":scope > details > summary").click()
    report.locator(".children-toggle").click()
    expect(report.locator(".children-note")).to_have_text("This step has no children.")


def test_children_update_live_while_the_view_is_open(orch, server, gates, page):
    def work(ctx, n):
        gates[f"child.{n}"].wait(TIMEOUT)
        if n == 1:
            raise ValueError("child 1 gave up")

    def spawner(ctx):
        for n in range(3):
            ctx.spawn(work, n)
        gates["more"].wait(TIMEOUT)
        ctx.spawn(work, 3)  # created while the view is open
        gates["step"].wait(TIMEOUT)

    orch.define("live", [Step("spawn", spawner)])
    job_id = orch.start("live")
    page.goto(server.url + "/")
    open_job(page, job_id)
    step = step_row(page, job_id, "spawn")
    step.locator(".children-toggle").click()
    expect(step.locator('[data-child][data-status="running"]')).to_have_count(3)
    first, second = sorted(orch.children(job_id, step="spawn")["children"], key=lambda c: c["created_at"])[:2]

    gates["child.0"].set()  # the step still runs: only the child stream can tell the page
    expect(step.locator(f'[data-child="{first["id"]}"]')).to_have_attribute("data-status", "completed")
    gates["child.1"].set()
    row = step.locator(f'[data-child="{second["id"]}"]')
    expect(row).to_have_attribute("data-status", "failed")
    expect(row.locator(".child-error")).to_have_text(re.compile("child 1 gave up"))
    gates["more"].set()
    expect(step.locator("[data-child]")).to_have_count(4)
    assert orch.snapshot(job_id)["job"]["status"] == "running"

    gates.open_all()
    orch.wait(job_id, TIMEOUT)
    expect(step.locator('[data-child][data-status="completed"]')).to_have_count(3)


# ---------------------------------------------------------------- layout and stream


def test_no_sideways_scroll_on_a_phone(orch, server, gates, page):
    page.set_viewport_size({"width": 390, "height": 844})
    orch.define("held", held_definition(gates))
    job_id = orch.start("held")
    gates["crawl"].set()
    gates["agents.note"].set()
    held_at(orch, job_id, "agents", AGENTS_HELD, AGENTS_HELD_LOGS + 1)
    page.goto(server.url + "/")
    open_job(page, job_id)
    agents = step_row(page, job_id, "agents")
    expect(agents.locator(".log li[data-seq]")).to_have_count(AGENTS_HELD_LOGS + 1)
    agents.locator(".children-toggle").click()
    failed = agents.locator('[data-child][data-status="failed"]')
    failed.locator(".traceback > summary").click()
    expect(failed.locator("[data-traceback]")).to_be_visible()
    job_el(page, job_id).locator("[data-action=cancel]").click()  # the confirm row too
    expect(job_el(page, job_id).locator(".confirm")).to_be_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "operator-390.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390


def test_the_pages_seq_reaches_the_servers_once_a_job_ends(orch, server, page):
    define_quick(orch)
    page.goto(server.url + "/")
    expect(connection(page)).to_have_attribute("data-connection", "live")
    finished(orch, "quick", 1)
    expect(connection(page)).to_have_attribute("data-seq", str(orch.seq))  # the last event is its `end`
