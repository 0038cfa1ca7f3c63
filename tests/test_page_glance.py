"""A page that explains at a glance (issue 17), in a real Chromium under the strict CSP: why a
job failed in words, a completion with failed children that looks different, rows that hold
still, and an accessible page (axe-core) in light and dark.

Fixtures (`browser`, `page`, `server`, `orch`) come from tests/test_page.py.
"""

# ruff: noqa: F811

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from stepstream import Orchestrator, Step
from tests.browser import ARTIFACTS, _unavailable
from tests.test_page import (  # noqa: F401  (fixtures `browser`, `page`, `server`, `orch`)
    TIMEOUT,
    browser,
    open_job,
    orch,
    page,
    server,
    step_row,
    watch_page,
)

pytest.importorskip("playwright")
from playwright.sync_api import Page, expect  # noqa: E402

pytestmark = pytest.mark.browser
expect.set_options(timeout=15_000)
PERMISSION = "PermissionError: record …: upstream rejected the API key"


def define_import(orch: Orchestrator, name: str = "import", failing: tuple[int, ...] | None = None) -> None:
    """read: 12 records; those in `failing` (default: all) fail, every fourth with a ValueError,
    the others with a PermissionError -> publish."""

    def record(ctx, n):
        if failing is not None and n not in failing:
            return
        if n % 4 == 0:
            raise ValueError(f"row {n} has no id")
        raise PermissionError(f"record {n}: upstream rejected the API key")

    def read(ctx):
        for n in range(12):
            ctx.spawn(record, n)

    orch.define(name, [Step("read", read), Step("publish", lambda ctx: ctx.log("info", "published"))])


def job_el(page: Page, job_id: str):
    return page.locator(f'[data-job="{job_id}"]')


def shoot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


# ---------------------------------------------------------------- failures explained


def test_a_failed_job_says_why_in_words_and_leads_to_the_children_and_their_tracebacks(orch, server, page):
    page.set_viewport_size({"width": 1400, "height": 900})
    define_import(orch)
    job_id = orch.start("import")
    assert orch.wait(job_id, TIMEOUT)["job"]["status"] == "failed"
    page.goto(server.url + "/")
    job = job_el(page, job_id)
    groups = job.locator(".job-failures [data-failure-group]")
    expect(groups).to_have_count(2)
    expect(groups.nth(0).locator(".failure-error")).to_have_text(PERMISSION)
    expect(groups.nth(0).locator("button")).to_have_text("9 children in read")
    expect(groups.nth(1).locator(".failure-error")).to_have_text("ValueError: row … has no id")
    expect(groups.nth(1).locator("button")).to_have_text("3 children in read")

    groups.nth(0).locator("button").click()
    read = step_row(page, job_id, "read")
    expect(read.locator(".children-group")).to_be_visible()
    expect(read.locator(".children-group-error")).to_have_text(PERMISSION)
    rows = read.locator("[data-child]")
    expect(rows).to_have_count(9)
    assert set(rows.evaluate_all("rows => rows.map(r => r.dataset.status)")) == {"failed"}
    expect(read.locator(".child-error").first).to_contain_text("upstream rejected the API key")
    first = rows.first
    first.locator(".traceback > summary").click()
    expect(first.locator("[data-traceback]")).to_contain_text("PermissionError: record")
    expect(read.locator(".step-failures [data-failure-group]")).to_have_count(2)  # the step says it too
    shoot(page, "failures-1400.png")

    read.locator(".children-group-clear").click()
    expect(rows).to_have_count(12)
    expect(read.locator(".children-group")).to_be_hidden()


def test_completed_with_failed_children_looks_different_from_a_clean_completion(orch, server, page):
    define_import(orch, "clean", failing=())
    define_import(orch, "partly", failing=(1, 4))
    clean = orch.start("clean")
    orch.wait(clean, TIMEOUT)
    partly = orch.start("partly")
    final = orch.wait(partly, TIMEOUT)["job"]
    assert final["status"] == "completed" and final["progress"]["failed"] == 2
    page.goto(server.url + "/")

    expect(job_el(page, partly)).to_have_attribute("data-status", "completed")  # the server's status
    expect(job_el(page, partly).locator(":scope > .job-head > .status")).to_have_text("completed, 2 failed")
    expect(job_el(page, clean).locator(":scope > .job-head > .status")).to_have_text("completed")
    colour = "el => getComputedStyle(el).color"
    assert (job_el(page, partly).locator(":scope > .job-head > .status").evaluate(colour)
            != job_el(page, clean).locator(":scope > .job-head > .status").evaluate(colour))
    expect(step_row(page, partly, "read").locator(":scope > details > summary > .status")).to_have_text(
        "completed, 2 failed")
    groups = job_el(page, partly).locator(".job-failures [data-failure-group]")
    expect(groups).to_have_count(2)
    expect(job_el(page, clean).locator(".job-failures")).to_be_hidden()
    shoot(page, "partly-failed-1280.png")


# ---------------------------------------------------------------- progress that means what it says

BAR_VALUES = """id => {
    const bar = document.querySelector(`[data-job="${id}"] > .job-head [role=progressbar]`);
    window.__bar = [Number(bar.getAttribute('aria-valuenow'))];
    new MutationObserver(() => window.__bar.push(Number(bar.getAttribute('aria-valuenow'))))
        .observe(bar, {attributes: true, attributeFilter: ['aria-valuenow']});
}"""


def test_the_job_bar_never_runs_backwards_when_a_later_step_fans_out(orch, server, gates, page):
    def quick(ctx, n):
        pass

    def held(ctx, n):
        gates["held"].wait(TIMEOUT)

    def first(ctx):
        for n in range(4):
            ctx.spawn(quick, n)
        gates["first"].wait(TIMEOUT)

    def second(ctx):
        for n in range(40):
            ctx.spawn(held, n)

    orch.define("two", [Step("first", first), Step("second", second)])
    job_id = orch.start("two")
    page.goto(server.url + "/")
    job = job_el(page, job_id)
    expect(step_row(page, job_id, "first")).to_have_attribute("data-completed", "4")
    page.evaluate(BAR_VALUES, job_id)
    gates["first"].set()
    expect(step_row(page, job_id, "second")).to_have_attribute("data-total", "40")
    bar = job.locator(":scope > .job-head [role=progressbar]")
    expect(bar).to_have_attribute("aria-valuenow", "50")  # one of two steps done; the second at 0 of 40
    gates["held"].set()
    expect(job).to_have_attribute("data-status", "completed")
    expect(bar).to_have_attribute("aria-valuenow", "100")
    values = page.evaluate("window.__bar")
    assert values == sorted(values), values


def test_a_step_still_discovering_work_says_so_and_estimates_only_once_it_stopped(orch, server, gates, page):
    def child(ctx, n):
        if n >= 2:
            gates["rest"].wait(TIMEOUT)

    def discover(ctx):
        for n in range(5):
            ctx.spawn(child, n)
        gates["more"].wait(TIMEOUT)
        for n in range(5, 1205):
            ctx.spawn(child, n)
        gates["end"].wait(TIMEOUT)

    orch.define("discover", [Step("discover", discover)])
    job_id = orch.start("discover")
    page.goto(server.url + "/")
    row = step_row(page, job_id, "discover")
    expect(row).to_have_attribute("data-completed", "2")
    expect(row).to_have_attribute("data-eta-s", re.compile(r"^\d"))  # 3 left, nothing new found lately

    gates["more"].set()
    expect(row).to_have_attribute("data-total", "1205")
    expect(row.locator(".eta")).to_have_text(re.compile(r"^discovering: 1,205 so far"))
    expect(row).to_have_attribute("data-discovering", "true")
    expect(row).not_to_have_attribute("data-eta-s", re.compile(".*"))
    shoot(page, "discovering-1280.png")

    # Nothing new for a few seconds: the step stopped finding work, an estimate comes back.
    expect(row).not_to_have_attribute("data-discovering", "true")
    expect(row).to_have_attribute("data-eta-s", re.compile(r"^\d"))
    expect(row.locator(".eta")).to_have_text(re.compile(r"^~.+ left$"))
    gates.open_all()
    expect(job_el(page, job_id)).to_have_attribute("data-status", "completed")


def test_a_cancelled_job_took_at_least_as_long_as_each_of_its_steps(orch, server, gates, page):
    def stubborn(ctx, n):
        while not ctx.cancelled:
            time.sleep(0.01)
        time.sleep(0.3)  # stops a little after the cancel

    def work(ctx):
        for n in range(3):
            ctx.spawn(stubborn, n)

    orch.define("stubborn", [Step("work", work), Step("after", lambda ctx: None)])
    job_id = orch.start("stubborn")
    page.goto(server.url + "/")
    row = step_row(page, job_id, "work")
    expect(row).to_have_attribute("data-running", "3")
    orch.cancel(job_id)
    final = orch.wait(job_id, TIMEOUT)
    expect(row).to_have_attribute("data-status", "cancelled")
    job = job_el(page, job_id)
    expect(job).to_have_attribute("data-status", "cancelled")
    expect(job.locator(":scope > .job-head .elapsed")).to_have_text(re.compile(r"^took "))
    step = next(s for s in final["job"]["steps"] if s["name"] == "work")
    assert float(job.get_attribute("data-elapsed-s")) >= float(row.get_attribute("data-elapsed-s"))
    assert step["finished_at"] and float(row.get_attribute("data-elapsed-s")) > 0.3


# ---------------------------------------------------------------- rows that read at a glance and hold still

COUNT_BOXES = """el => [...el.querySelectorAll('.count')].map(c => {
    const r = c.getBoundingClientRect();
    return [Math.round(r.left), Math.round(r.top)];
})"""
WIDE = """() => [...document.querySelectorAll('body *')].filter(el => el.getBoundingClientRect().right > 391)
    .slice(0, 8).map(el => `${el.tagName}.${el.className} ${Math.round(el.getBoundingClientRect().right)}`)"""
LONG_NAME = "reconcile_every_customer_invoice_against_the_ledger_and_the_bank_statements"


def test_rows_read_at_a_glance_and_hold_still_as_numbers_grow(orch, server, gates, page):
    page.set_viewport_size({"width": 1400, "height": 900})

    def child(ctx, n):
        gates["children"].wait(TIMEOUT)

    def many(ctx):
        for n in range(9):
            ctx.spawn(child, n)
        gates["more"].wait(TIMEOUT)
        for n in range(9, 1205):
            ctx.spawn(child, n)
        gates["end"].wait(TIMEOUT)

    orch.define(LONG_NAME, [Step("many", many)])
    job_id = orch.start(LONG_NAME)
    page.goto(server.url + "/")
    open_job(page, job_id)
    job, row = job_el(page, job_id), step_row(page, job_id, "many")
    expect(row).to_have_attribute("data-total", "9")
    counts = row.locator(":scope > details > summary > .counts")
    before = counts.evaluate(COUNT_BOXES)
    assert len({top for _, top in before}) == 1, before  # one line

    gates["more"].set()
    expect(row).to_have_attribute("data-total", "1205")
    expect(counts.locator(".count-total b")).to_have_text("1,205")  # thousands separators
    assert counts.evaluate(COUNT_BOXES) == before  # nothing moved
    zero = counts.locator(".count-failed")
    assert "zero" in zero.get_attribute("class")
    assert zero.evaluate("el => getComputedStyle(el).opacity") == "1"  # quiet by colour, not faded

    started = job.locator(":scope > .job-head .started")
    expect(started).to_have_text(re.compile(r"^(just now|\d+ s ago)$"))
    assert re.match(r"^started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", started.get_attribute("title"))
    # A long name wraps beside its chevron, never leaving it on a line of its own.
    chevron = job.locator(".toggle .chevron").bounding_box()
    name = job.locator(".toggle .definition").bounding_box()
    assert abs(chevron["y"] - name["y"]) < 6 and chevron["x"] < name["x"]
    shoot(page, "rows-1400.png")

    page.set_viewport_size({"width": 390, "height": 844})
    page.emulate_media(color_scheme="dark")
    row.locator(".children-toggle").click()
    expect(row.locator("[data-child]").first).to_be_visible()
    boxes = counts.evaluate(COUNT_BOXES)
    assert len({top for _, top in boxes}) == 2 and len({left for left, _ in boxes}) == 3  # a 3 x 2 grid
    shoot(page, "rows-390-dark.png")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, page.evaluate(WIDE)
    gates.open_all()


# ---------------------------------------------------------------- accessible

AXE = Path(__file__).resolve().parent.parent / "node_modules" / "axe-core" / "axe.min.js"
AXE_RUN = """async () => {
    const result = await axe.run(document, {resultTypes: ['violations']});
    return result.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')
        .map(v => `${v.id} (${v.impact}): ${v.nodes.length} x, e.g. ${v.nodes[0].target.join(' ')}: `
                  + v.nodes[0].failureSummary);
}"""


def axe_violations(page: Page) -> list[str]:
    """Serious and critical violations axe-core finds on the page as it is now. (Injected with
    evaluate: the page's CSP refuses script tags from elsewhere.)"""
    if not AXE.is_file():
        _unavailable(f"axe-core is not installed at {AXE}; run `npm ci` (scripts/test does)")
    if not page.evaluate("typeof axe !== 'undefined'"):
        page.evaluate(AXE.read_text())
    return page.evaluate(AXE_RUN)


def test_axe_core_finds_no_serious_violation_in_light_and_dark(orch, server, gates, page):
    page.set_viewport_size({"width": 1400, "height": 900})
    define_import(orch)
    define_import(orch, "partly", failing=(1, 4))
    orch.wait(orch.start("import"), TIMEOUT)
    orch.wait(orch.start("partly"), TIMEOUT)

    def child(ctx, n):
        ctx.log("debug" if n % 2 else "warning", f"child {n} working")
        if n == 0:
            raise ValueError("child 0 broke")
        gates["children"].wait(TIMEOUT)

    def spawn(ctx):
        for n in range(6):
            ctx.spawn(child, n)
        gates["step"].wait(TIMEOUT)

    orch.define("held", [Step("spawn", spawn), Step("after", lambda ctx: None)])
    held = orch.start("held")
    page.goto(f"{server.url}/?job={held}")
    row = step_row(page, held, "spawn")
    expect(row).to_have_attribute("data-running", "3")  # the handler holds the 4th worker
    row.locator(".children-toggle").click()
    expect(row.locator("[data-child]")).to_have_count(6)
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        found = axe_violations(page)
        assert found == [], "\n".join([scheme, *found])
        shoot(page, f"axe-{scheme}-1400.png")
    gates.open_all()


def test_each_job_has_a_heading_labelled_buttons_and_a_keyboard_scrollable_log(orch, server, gates, page):
    define_import(orch, "partly", failing=(1, 4))
    done = orch.start("partly")
    orch.wait(done, TIMEOUT)
    page.goto(f"{server.url}/?job={done}")
    job = job_el(page, done)
    expect(page.get_by_role("heading", name=re.compile(rf"^partly {done}"))).to_have_count(1)
    expect(page.get_by_role("button", name=f"Delete partly {done}")).to_be_visible()
    expect(page.get_by_role("button", name=f"Rerun partly {done}")).to_be_visible()
    read = step_row(page, done, "read")
    read.locator(":scope > details > summary").click()
    log = read.locator(".log")
    expect(log.locator("li")).not_to_have_count(0)
    assert log.get_attribute("tabindex") == "0" and log.get_attribute("aria-label") == "log of step read"
    expect(job).to_have_attribute("data-status", "completed")


def test_a_deep_link_brings_its_job_to_the_top_with_focus_and_names_it_in_the_tab_title(orch, server, page):
    define_import(orch, "partly", failing=(1, 4))
    define_import(orch, "clean", failing=())
    for _ in range(10):  # older jobs below it
        orch.wait(orch.start("clean"), TIMEOUT)
    linked = orch.start("partly")
    orch.wait(linked, TIMEOUT)
    for _ in range(12):  # newer jobs above it: the linked one starts below the fold
        orch.wait(orch.start("clean"), TIMEOUT)
    page.set_viewport_size({"width": 1280, "height": 700})
    page.goto(f"{server.url}/?job={linked}")
    job = job_el(page, linked)
    expect(job).to_have_attribute("data-expanded", "true")
    expect(page).to_have_title("partly completed, 2 failed · stepstream")
    page.wait_for_function(
        "id => document.activeElement && document.activeElement.closest(`[data-job='${id}']`) !== null", arg=linked)
    expect(job).to_have_class(re.compile(r"\bhighlight\b"))
    top = job.evaluate("el => el.getBoundingClientRect().top")
    assert 40 <= top <= 80, top  # at the top, just below the sticky header
    shoot(page, "deep-link-1280.png")


# ---------------------------------------------------------------- empty states


def test_with_no_definitions_start_is_disabled_and_the_page_says_how_to_define_one(orch, server, page):
    page.goto(server.url + "/")
    form = page.locator("#start-form")
    expect(form.locator(".no-definitions")).to_be_visible()
    expect(form.locator(".no-definitions")).to_contain_text("orch.define(")
    expect(form.get_by_role("button", name="Start")).to_be_disabled()
    assert axe_violations(page) == []


# ---------------------------------------------------------------- a light children panel

WATCH_ROWS = """tbody => {
    window.__rowsAdded = 0;
    for (const tr of tbody.rows) tr.__seen = true;
    new MutationObserver(records => records.forEach(r => window.__rowsAdded += r.addedNodes.length))
        .observe(tbody, {childList: true});
}"""


def test_the_children_panel_updates_rows_in_place_as_children_finish(orch, server, gates, page):
    def child(ctx, n):
        gates[f"child.{n}"].wait(TIMEOUT)

    def spawn(ctx):
        for n in range(6):
            ctx.spawn(child, n)

    orch.define("six", [Step("spawn", spawn)])
    job_id = orch.start("six")
    page.goto(server.url + "/")
    open_job(page, job_id)
    row = step_row(page, job_id, "spawn")
    expect(row).to_have_attribute("data-running", "4")
    row.locator(".children-toggle").click()
    expect(row.locator('[data-child][data-status="running"]')).to_have_count(4)
    tbody = row.locator(".children-table tbody")
    tbody.evaluate(WATCH_ROWS)
    for n in range(6):
        gates[f"child.{n}"].set()
    expect(row.locator('[data-child][data-status="completed"]')).to_have_count(6)
    assert page.evaluate("window.__rowsAdded") == 0  # no row was rebuilt or moved
    assert tbody.evaluate("tb => [...tb.rows].every(tr => tr.__seen)")


# ---------------------------------------------------------------- the page's state in its URL


def filters_shown(page: Page) -> dict:
    return page.evaluate("""() => Object.fromEntries(['search', 'status', 'definition'].map(
        f => [f, document.querySelector(`[data-filter=${f}]`).value]))""")


def shown(page: Page) -> list[str]:
    return page.eval_on_selector_all("[data-job]", "els => els.map(el => el.dataset.job)")


def expanded(page: Page) -> list[str]:
    return page.eval_on_selector_all("[data-job][data-expanded=true]", "els => els.map(el => el.dataset.job)")


def test_filters_and_the_open_job_live_in_the_url_across_reload_history_and_sharing(orch, server, browser, page):
    define_import(orch, "clean", failing=())
    define_import(orch, "broken")
    cleans = [orch.start("clean") for _ in range(3)]
    brokens = [orch.start("broken") for _ in range(2)]
    for job_id in cleans + brokens:
        orch.wait(job_id, TIMEOUT)
    page.goto(server.url + "/")
    expect(page.locator("[data-job]")).to_have_count(5)

    page.select_option("[data-filter=status]", "failed")
    expect(page).to_have_url(f"{server.url}/?status=failed")
    expect(page.locator("[data-job]")).to_have_count(2)
    page.select_option("[data-filter=definition]", "broken")
    expect(page).to_have_url(f"{server.url}/?status=failed&definition=broken")
    target = brokens[0]
    page.fill("[data-filter=search]", target[:-2])
    expect(page).to_have_url(f"{server.url}/?status=failed&definition=broken&q={target[:-2]}")
    page.locator(f'[data-job="{target}"] > .job-head .toggle').click()
    with_job = f"{server.url}/?status=failed&definition=broken&q={target[:-2]}&job={target}"
    expect(page).to_have_url(with_job)

    page.reload()  # kept across a reload
    expect(job_el(page, target)).to_have_attribute("data-expanded", "true")
    assert filters_shown(page) == {"search": target[:-2], "status": "failed", "definition": "broken"}
    assert shown(page) == [i for i in brokens[::-1] if i.startswith(target[:-2])]

    shared = browser.new_context(viewport={"width": 390, "height": 844}).new_page()  # a link sent to someone
    shared.goto(with_job)
    expect(job_el(shared, target)).to_have_attribute("data-expanded", "true")
    expect(shared.locator("[data-filter=definition]")).to_have_value("broken")
    expect(shared.locator("[data-filter=status]")).to_have_value("failed")
    expect(shared.locator("[data-job]")).to_have_count(len(shown(page)))
    shoot(shared, "url-state-390.png")
    shared.context.close()
    page.set_viewport_size({"width": 1400, "height": 900})
    shoot(page, "url-state-1400.png")

    page.go_back()  # closes the job, filters stay
    expect(page).to_have_url(f"{server.url}/?status=failed&definition=broken&q={target[:-2]}")
    expect(job_el(page, target)).to_have_attribute("data-expanded", "false")
    page.go_back()  # the search goes
    expect(page).to_have_url(f"{server.url}/?status=failed&definition=broken")
    expect(page.locator("[data-filter=search]")).to_have_value("")
    page.go_back()
    expect(page.locator("[data-filter=definition]")).to_have_value("")
    expect(page.locator("[data-job]")).to_have_count(2)
    page.go_back()
    expect(page).to_have_url(f"{server.url}/")
    expect(page.locator("[data-filter=status]")).to_have_value("")
    expect(page.locator("[data-job]")).to_have_count(5)
    page.go_forward()
    expect(page.locator("[data-filter=status]")).to_have_value("failed")
    expect(page.locator("[data-job]")).to_have_count(2)
    assert expanded(page) == []


# ---------------------------------------------------------------- the list stays a list


def test_the_newest_running_job_does_not_open_by_itself_and_hide_the_list(orch, server, gates, page):
    define_import(orch, "clean", failing=())
    older = [orch.start("clean") for _ in range(3)]
    for job_id in older:
        orch.wait(job_id, TIMEOUT)

    def held(ctx):
        ctx.log("info", "waiting")
        gates["held"].wait(TIMEOUT)

    orch.define("held", [Step("wait", held)])
    running = orch.start("held")
    page.goto(server.url + "/")
    job = job_el(page, running)
    expect(job.locator(":scope > .job-head .status")).to_have_text("running")
    expect(page.locator("[data-job]")).to_have_count(4)
    expect(page.locator("[data-connection]")).to_have_attribute("data-connection", "live")
    orch.start("held")  # a newer running job arrives: nothing opens either
    expect(page.locator("[data-job]")).to_have_count(5)
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
    assert expanded(page) == []
    expect(step_row(page, running, "wait")).to_be_hidden()
    expect(job_el(page, older[0])).to_be_in_viewport()  # the list is there to read, not pushed away
    assert page.url == server.url + "/"
    page.set_viewport_size({"width": 390, "height": 844})
    shoot(page, "list-closed-390.png")
    page.set_viewport_size({"width": 1400, "height": 900})
    shoot(page, "list-closed-1400.png")

    job.locator(":scope > .job-head .toggle").click()  # the reader opens it
    expect(job).to_have_attribute("data-expanded", "true")
    expect(step_row(page, running, "wait").locator(".log li", has_text="waiting")).to_have_count(1)
    gates.open_all()


# ---------------------------------------------------------------- the steps over time

BAR_BOX = """el => { const r = el.querySelector('.tl-bar').getBoundingClientRect(); return [r.left, r.width]; }"""


def test_an_open_job_shows_its_steps_on_one_time_axis_live_with_a_text_alternative(orch, server, gates, page):
    page.set_viewport_size({"width": 1400, "height": 900})

    def quick(ctx, n):
        pass

    def waits(ctx, n):
        gates[f"load.{n}"].wait(TIMEOUT)

    def prepare(ctx):
        for n in range(10):
            ctx.spawn(quick, n)
        gates["prepare"].wait(TIMEOUT)

    def load(ctx):
        for n in range(4):
            ctx.spawn(waits, n)

    orch.define("phases", [Step("prepare", prepare), Step("load", load), Step("report", lambda ctx: None)])
    job_id = orch.start("phases")
    page.goto(f"{server.url}/?job={job_id}")
    job = job_el(page, job_id)
    timeline = job.locator("[data-timeline]")
    expect(timeline).to_be_visible()
    expect(timeline).to_have_accessible_name(re.compile("steps over time", re.I))
    rows = timeline.locator("[data-timeline-step]")
    expect(rows).to_have_count(3)
    prepare_row, load_row, report_row = (timeline.locator(f'[data-timeline-step="{n}"]')
                                         for n in ("prepare", "load", "report"))
    expect(prepare_row).to_have_attribute("data-status", "running")
    gates["prepare"].set()
    expect(load_row).to_have_attribute("data-status", "running")
    expect(load_row).to_have_attribute("data-start-s", re.compile(r"^\d"))
    expect(prepare_row).to_have_attribute("data-end-s", re.compile(r"^\d"))
    assert float(prepare_row.get_attribute("data-end-s")) <= float(load_row.get_attribute("data-start-s")) + 0.05
    assert load_row.get_attribute("data-end-s") is None
    expect(report_row.locator(".tl-bar")).to_be_hidden()
    expect(report_row).to_contain_text("not started")
    # Words for what the bars draw: when each step began and ended.
    expect(prepare_row).to_contain_text(re.compile(r"took \d"))
    expect(load_row).to_contain_text(re.compile(r"running for \d"))

    before = load_row.evaluate(BAR_BOX)
    page.wait_for_function(  # a running step's bar grows with the clock
        """([id, width]) => document.querySelector(`[data-job='${id}'] [data-timeline-step='load'] .tl-bar`)
            .getBoundingClientRect().width > width + 20""", arg=[job_id, before[1]])
    for n in range(4):  # children finish one by one: the step's finish rate as a sparkline
        gates[f"load.{n}"].set()
        expect(step_row(page, job_id, "load")).to_have_attribute("data-completed", str(n + 1))
        if n < 3:
            page.wait_for_timeout(300)  # spread in time, so the rate has a shape
    expect(job).to_have_attribute("data-status", "completed")
    spark = load_row.locator("svg.tl-spark")
    expect(spark).to_have_attribute("role", "img")
    expect(spark).to_have_attribute("aria-label", re.compile(r"children finished per second, at most \S+/"))
    expect(load_row).to_have_attribute("data-end-s", re.compile(r"^\d"))
    expect(report_row).to_have_attribute("data-status", "completed")
    final = load_row.evaluate(BAR_BOX)
    page.wait_for_timeout(1200)  # a tick: a finished job's bars stay put
    assert load_row.evaluate(BAR_BOX) == final
    shoot(page, "timeline-1400.png")
    page.set_viewport_size({"width": 390, "height": 844})
    job.scroll_into_view_if_needed()
    shoot(page, "timeline-390.png")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, page.evaluate(WIDE)


# ---------------------------------------------------------------- logs and ids

NO_CLIPBOARD = "delete Navigator.prototype.clipboard;"  # as on a page served over plain http


def test_logs_start_at_info_name_their_child_and_ids_copy_with_a_visible_confirmation(orch, server, gates, browser):
    def child(ctx, n):
        ctx.log("info", f"child {n} working")
        ctx.log("debug", f"child {n} detail")
        gates["children"].wait(TIMEOUT)

    def work(ctx):
        ctx.log("debug", "handler detail")
        for n in range(3):
            ctx.spawn(child, n)
        gates["work"].wait(TIMEOUT)

    orch.define("chatty", [Step("work", work)])
    job_id = orch.start("chatty")
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = context.new_page()
    problems = watch_page(page)
    page.goto(server.url + "/")
    open_job(page, job_id)
    row = step_row(page, job_id, "work")
    log = row.locator(".log")
    expect(log.locator("li", has_text="working")).to_have_count(3)
    expect(row.locator(".level")).to_have_value("info")
    expect(log.locator("li[data-level=debug]")).to_have_count(0)
    expect(row.locator(".log-note")).to_contain_text("info and above")

    # A child's line names its child; a click shows that child in the step's children.
    line = log.locator("li", has_text="child 1 working")
    who = line.locator("button[data-log-child]")
    child_id = who.get_attribute("data-log-child")
    assert orch.snapshot(child_id)["job"]["step_name"] == "work"
    expect(who).to_have_text(child_id)
    expect(who).to_have_accessible_name(f"Show child {child_id} of step work")
    expect(log.locator("li", has_text="step work started").locator("button")).to_have_count(0)  # the step's own
    who.click()
    rows = row.locator("[data-child]")
    expect(rows).to_have_count(1)
    expect(rows).to_have_attribute("data-child", child_id)
    expect(row.locator(".children-only")).to_be_visible()
    shoot(page, "log-child-1400.png")
    row.locator(".children-only-clear").click()
    expect(rows).to_have_count(3)

    # Ids copy with a labelled button and a visible confirmation.
    copy = job_el(page, job_id).get_by_role("button", name=f"Copy id of job {job_id}")
    copy.click()
    expect(job_el(page, job_id).locator(".job-head .copy-note")).to_have_text("copied")
    assert page.evaluate("navigator.clipboard.readText()") == job_id
    first = rows.first
    kid = first.get_attribute("data-child")
    first.get_by_role("button", name=f"Copy id of child {kid}").click()
    expect(first.locator(".copy-note")).to_have_text("copied")
    assert page.evaluate("navigator.clipboard.readText()") == kid
    page.set_viewport_size({"width": 390, "height": 844})
    shoot(page, "log-child-390.png")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, page.evaluate(WIDE)
    context.close()
    assert not problems, problems

    # Without the Clipboard API the id is selected, ready for Ctrl+C, and the page says so.
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.add_init_script(NO_CLIPBOARD)
    page = context.new_page()
    page.goto(f"{server.url}/?job={job_id}")
    page.get_by_role("button", name=f"Copy id of job {job_id}").click()
    note = job_el(page, job_id).locator(".job-head .copy-note")
    expect(note).to_have_text(re.compile(r"^(copied|selected: press Ctrl\+C)$"))
    assert page.evaluate("String(getSelection())") == job_id
    context.close()
    gates.open_all()


# ---------------------------------------------------------------- a big step's panel stays light

COUNT_EVENTSOURCES = """(() => {
  window.__eventSources = 0;
  const Real = window.EventSource;
  window.EventSource = class extends Real { constructor(...a) { super(...a); window.__eventSources += 1; } };
})();"""


def test_a_burst_of_a_thousand_children_finishing_keeps_the_panel_bounded_and_in_place(orch, server, page):
    """Structure only (the timing is bench/page.py --panel): the panel holds one page of rows,
    updated in place, and the streams are read with fetch, whose chunks the page hands over in
    slices (EventSource dispatches a whole network chunk, thousands of events, in one task)."""
    import asyncio

    n = 1000
    gate: dict = {}

    async def child(ctx, k):
        if "event" not in gate:
            gate["loop"], gate["event"] = asyncio.get_running_loop(), asyncio.Event()
        ctx.log("info", f"child {k} waiting")
        await gate["event"].wait()

    def fan(ctx):
        for k in range(n):
            ctx.spawn(child, k)

    orch.define("wide", [Step("fan", fan)])
    page.add_init_script(COUNT_EVENTSOURCES)
    job_id = orch.start("wide")
    page.goto(f"{server.url}/?job={job_id}")
    row = step_row(page, job_id, "fan")
    expect(row).to_have_attribute("data-running", str(n))
    row.locator(".children-toggle").click()
    rows = row.locator("[data-child]")
    expect(rows).to_have_count(50)  # one page, whatever the step's size
    expect(row.locator(".children-next")).to_be_enabled()
    expect(row.locator('[data-child][data-status="running"]')).to_have_count(50)
    row.locator(".children-table tbody").evaluate(WATCH_ROWS)
    gate["loop"].call_soon_threadsafe(gate["event"].set)
    expect(job_el(page, job_id)).to_have_attribute("data-status", "completed")
    expect(row.locator('[data-child][data-status="completed"]')).to_have_count(50)
    assert page.evaluate("window.__rowsAdded") == 0  # each row changed in place
    assert rows.count() == 50
    expect(row.locator(".log li[data-seq]")).not_to_have_count(0)
    assert page.evaluate("window.__eventSources") == 0
    page.set_viewport_size({"width": 1400, "height": 900})
    row.locator(".children-table").scroll_into_view_if_needed()
    shoot(page, "panel-1000-1400.png")
    page.set_viewport_size({"width": 390, "height": 844})
    shoot(page, "panel-1000-390.png")


# ---------------------------------------------------------------- search


def test_search_matches_any_part_of_an_id_and_the_definition_name(orch, server, page):
    define_import(orch, "nightly_import", failing=())
    define_import(orch, "reconcile", failing=())
    imports = [orch.start("nightly_import") for _ in range(2)]
    others = [orch.start("reconcile") for _ in range(3)]
    for job_id in imports + others:
        orch.wait(job_id, TIMEOUT)
    page.set_viewport_size({"width": 1400, "height": 900})
    page.goto(server.url + "/")
    expect(page.locator("[data-job]")).to_have_count(5)
    search = page.locator("[data-filter=search]")
    expect(search).to_have_accessible_name(re.compile("definition", re.I))

    search.fill("IMPORT")  # part of a definition's name, any case
    expect(page.locator("[data-job]")).to_have_count(2)
    assert sorted(shown(page)) == sorted(imports)
    expect(page).to_have_url(f"{server.url}/?q=IMPORT")
    shoot(page, "search-1400.png")

    # A part of one id that is not its start (the server's `q` is a prefix) and no other id holds.
    target, everyone = others[1], imports + others
    parts = [target[i:j] for i in range(2, len(target)) for j in range(i + 2, len(target) + 1)]
    middle = min((p for p in parts if sum(p in i for i in everyone) == 1), key=len)
    search.fill(middle)
    expect(page.locator("[data-job]")).to_have_count(1)
    assert shown(page) == [target]
    page.set_viewport_size({"width": 390, "height": 844})
    shoot(page, "search-390.png")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, page.evaluate(WIDE)


# ---------------------------------------------------------------- search in a step's log


def test_a_steps_log_can_be_searched_live_and_cleared_back_to_the_live_tail(orch, server, gates, page):
    page.set_viewport_size({"width": 1400, "height": 900})

    def work(ctx):
        for n in range(30):
            ctx.log("info", f"fetched https://a.example/{n}")
            if n % 10 == 3:
                ctx.log("warning", f"Timeout on page {n}, retrying")
        gates["more"].wait(TIMEOUT)
        ctx.log("warning", "TIMEOUT on page 99, giving up")
        ctx.log("info", "fetched https://a.example/99")
        gates["work"].wait(TIMEOUT)

    orch.define("crawl", [Step("work", work)])
    job_id = orch.start("crawl")
    page.goto(f"{server.url}/?job={job_id}")
    row = step_row(page, job_id, "work")
    log = row.locator(".log")
    expect(log.locator("li", has_text="fetched")).to_have_count(30)

    search = row.get_by_role("searchbox", name="Search the log of step work")
    search.fill("timeout")
    search.press("Enter")
    expect(log.locator("li")).to_have_count(3)
    expect(log.locator("li").first).to_contain_text("Timeout on page 3, retrying")
    note = row.locator(".log-note")
    expect(note).to_have_text('3 lines match “timeout” at info and above')
    shoot(page, "log-search-1400.png")

    gates["more"].set()  # a matching line that arrives while searching joins the results
    expect(log.locator("li")).to_have_count(4)
    expect(log.locator("li").last).to_contain_text("TIMEOUT on page 99, giving up")
    expect(note).to_have_text('4 lines match “timeout” at info and above')
    expect(log.locator("li", has_text="a.example/99")).to_have_count(0)

    search.fill("no such words")
    search.press("Enter")
    expect(note).to_have_text('no line matches “no such words” at info and above')
    expect(log.locator("li")).to_have_count(0)
    page.set_viewport_size({"width": 390, "height": 844})
    search.fill("PAGE 2")
    search.press("Enter")
    expect(note).to_have_text('1 line matches “PAGE 2” at info and above')  # any case, any place in the line
    expect(log.locator("li")).to_contain_text("Timeout on page 23, retrying")
    shoot(page, "log-search-390.png")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, page.evaluate(WIDE)

    # Escape (or the clear button) goes back to the live tail.
    search.press("Escape")
    expect(search).to_have_value("")
    expect(log.locator("li", has_text="fetched")).to_have_count(31)
    expect(note).to_contain_text("showing")
    search.fill("giving up")
    search.press("Enter")
    expect(log.locator("li")).to_have_count(1)
    row.get_by_role("button", name="Clear the search of step work").click()
    expect(log.locator("li", has_text="fetched")).to_have_count(31)
    expect(search).to_be_focused()
    gates.open_all()


# ---------------------------------------------------------------- sorting the children panel

NAMES = "tbody => [...tbody.rows].map(tr => tr.querySelector('.child-name').textContent)"


def test_the_children_panel_sorts_by_status_or_duration_and_keeps_rows_in_place(orch, server, gates, page):
    page.set_viewport_size({"width": 1400, "height": 900})

    def child(ctx, n):
        if n == 1:
            raise ValueError("child 1 broke")
        if n >= 2:
            gates[f"child.{n}"].wait(TIMEOUT)

    def spawn(ctx):
        for n in range(6):
            ctx.spawn(child, n)

    orch.define("six", [Step("spawn", spawn)])
    job_id = orch.start("six")
    page.goto(f"{server.url}/?job={job_id}")
    row = step_row(page, job_id, "spawn")
    expect(row).to_have_attribute("data-running", "4")
    row.locator(".children-toggle").click()
    tbody = row.locator(".children-table tbody")
    expect(row.locator('[data-child][data-status="running"]')).to_have_count(4)
    gates["child.2"].set()
    expect(row.locator('[data-child][data-status="completed"]')).to_have_count(2)
    created = [f"child({n})" for n in range(6)]
    assert tbody.evaluate(NAMES) == created  # the default: creation order
    tbody.evaluate(WATCH_ROWS)

    sort = row.get_by_role("combobox", name="Sort")
    expect(sort).to_have_value("")
    sort.select_option("status")  # what needs a look first: failed, running, pending, then done
    expect(row.locator("[data-child]").first).to_have_attribute("data-status", "failed")
    assert tbody.evaluate(NAMES) == ["child(1)", "child(3)", "child(4)", "child(5)", "child(0)", "child(2)"]
    shoot(page, "children-sorted-1400.png")

    gates["child.3"].set()  # a row whose status changes moves to its place, the same row
    expect(row.locator("[data-child]").nth(3)).to_have_attribute("data-status", "completed")
    assert tbody.evaluate(NAMES) == ["child(1)", "child(4)", "child(5)", "child(0)", "child(2)", "child(3)"]

    sort.select_option("duration")  # the longest first: the running ones, then child 2 and 3
    statuses = "tbody => [...tbody.rows].map(tr => tr.dataset.status)"
    expect(row.locator("[data-child]").first).to_have_attribute("data-status", "running")
    assert tbody.evaluate(statuses)[:2] == ["running", "running"]
    assert set(tbody.evaluate(NAMES)[2:4]) == {"child(2)", "child(3)"}
    page.set_viewport_size({"width": 390, "height": 844})
    shoot(page, "children-sorted-390.png")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, page.evaluate(WIDE)

    sort.select_option("")
    expect(row.locator("[data-child]").first).to_contain_text("child(0)")
    assert tbody.evaluate(NAMES) == created
    assert tbody.evaluate("tb => [...tb.rows].every(tr => tr.__seen)")  # moved, never rebuilt
    gates.open_all()


# ---------------------------------------------------------------- which call a child is

LONG_URL = "https://a.example/" + "a-very-long-path-segment/" * 5 + "index.html"


def test_a_child_row_shows_its_arguments_and_a_long_one_is_cut_cleanly_with_the_whole_on_hover(
        orch, server, gates, page):
    page.set_viewport_size({"width": 1400, "height": 900})

    def fetch(ctx, url, depth, **how):
        gates["fetch"].wait(TIMEOUT)

    def crawl(ctx):
        ctx.spawn(fetch, "https://a.example/x", 2)
        ctx.spawn(fetch, LONG_URL, 3, retry=True)

    orch.define("crawl", [Step("crawl", crawl)])
    job_id = orch.start("crawl")
    page.goto(f"{server.url}/?job={job_id}")
    row = step_row(page, job_id, "crawl")
    row.locator(".children-toggle").click()
    names = row.locator("[data-child] .child-name")
    expect(names).to_have_count(2)
    expect(names.first).to_have_text('fetch("https://a.example/x", 2)')
    expect(names.first).to_have_attribute("title", 'fetch("https://a.example/x", 2)')
    long = names.nth(1)
    expect(long).to_have_text(re.compile(r'^fetch\("https://a\.example/a-very-long-path-segment/.*…\)$'))
    whole = long.text_content()
    expect(long).to_have_attribute("title", whole)  # the whole call on hover

    def cut_cleanly() -> None:
        box = long.evaluate("""td => {
            const r = td.getBoundingClientRect(), row = td.closest('tr').getBoundingClientRect();
            return {cut: td.scrollWidth > td.clientWidth, right: r.right, rowRight: row.right,
                    ellipsis: getComputedStyle(td).textOverflow, lines: Math.round(r.height)}}""")
        assert box["cut"] and box["ellipsis"] == "ellipsis", box  # one line, ending in "…"
        assert box["right"] <= box["rowRight"] + 0.5, box  # inside its row

    cut_cleanly()
    assert names.first.evaluate("td => td.scrollWidth <= td.clientWidth")  # a short call is whole
    shoot(page, "child-summary-1400.png")
    page.set_viewport_size({"width": 390, "height": 844})
    cut_cleanly()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, page.evaluate(WIDE)
    long.hover()
    shoot(page, "child-summary-390.png")
    gates.open_all()


# ---------------------------------------------------------------- why children wait, each attempt's error


def test_a_step_whose_children_wait_for_a_busy_worker_says_so(orch, server, gates, page):
    page.set_viewport_size({"width": 1400, "height": 900})

    def work(ctx, n):
        gates["work"].wait(TIMEOUT)

    def fan(ctx):
        for n in range(12):
            ctx.spawn(work, n)

    orch.define("fan", [Step("fan", fan)])
    job_id = orch.start("fan")
    page.goto(f"{server.url}/?job={job_id}")
    row = step_row(page, job_id, "fan")
    expect(row).to_have_attribute("data-pending", "8")
    expect(row).to_have_attribute("data-waiting", "true")
    expect(row.locator(".waiting")).to_have_text("8 waiting for a worker (4 of 4 busy)")
    expect(row.locator(".waiting")).to_be_visible()
    assert_axe_clean(page)
    shoot(page, "waiting-1400.png")
    page.set_viewport_size({"width": 390, "height": 844})
    expect(row.locator(".waiting")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shoot(page, "waiting-390.png")
    gates.open_all()
    expect(job_el(page, job_id)).to_have_attribute("data-status", "completed")
    expect(row).not_to_have_attribute("data-waiting", "true")
    expect(row.locator(".waiting")).to_be_hidden()


def test_a_retried_child_row_shows_the_error_of_each_earlier_attempt(orch, server, page):
    page.set_viewport_size({"width": 1400, "height": 900})

    def upload(ctx, name, fail):
        if ctx.attempt <= fail:
            raise ConnectionError(f"upload of {name} reset by peer (try {ctx.attempt})")

    def send(ctx):
        ctx.spawn(upload, "a.csv", 2, retries=2)  # fails twice, then succeeds
        ctx.spawn(upload, "b.csv", 9, retries=1)  # fails both attempts
        ctx.spawn(upload, "c.csv", 0)

    orch.define("send", [Step("send", send)])
    job_id = orch.start("send")
    orch.wait(job_id, TIMEOUT)
    page.goto(f"{server.url}/?job={job_id}")
    row = step_row(page, job_id, "send")
    row.locator("details").first.evaluate("d => d.open = true")
    row.locator(".children-toggle").click()
    kids = row.locator("[data-child]")
    expect(kids).to_have_count(3)
    earlier = kids.locator(".child-attempts")
    expect(earlier.nth(0)).to_have_text("attempt 1: ConnectionError: upload of a.csv reset by peer (try 1); "
                                        "attempt 2: ConnectionError: upload of a.csv reset by peer (try 2)")
    expect(earlier.nth(0)).to_have_attribute("data-attempts", "2")
    expect(kids.nth(1).locator(".child-error > span").first).to_have_text(
        "ConnectionError: upload of b.csv reset by peer (try 2)")  # the last attempt's, as before
    expect(earlier.nth(1)).to_have_text("attempt 1: ConnectionError: upload of b.csv reset by peer (try 1)")
    expect(earlier.nth(2)).to_be_hidden()
    assert_axe_clean(page)
    shoot(page, "attempts-1400.png")
    page.set_viewport_size({"width": 390, "height": 844})
    expect(earlier.nth(0)).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shoot(page, "attempts-390.png")


def assert_axe_clean(page: Page) -> None:
    """axe-core finds no serious violation in light and in dark, as the page is now."""
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        found = axe_violations(page)
        assert found == [], "\n".join([scheme, *found])
    page.emulate_media(color_scheme="light")
