"""A page that explains at a glance (issue 17), in a real Chromium under the strict CSP: why a
job failed in words, a completion with failed children that looks different, rows that hold
still, and an accessible page (axe-core) in light and dark.

Fixtures (`browser`, `page`, `server`, `orch`) come from tests/test_page.py.
"""

# ruff: noqa: F811

from __future__ import annotations

import pytest

from stepstream import Orchestrator, Step
from tests.browser import ARTIFACTS
from tests.test_page import (  # noqa: F401  (fixtures `browser`, `page`, `server`, `orch`)
    TIMEOUT,
    browser,
    orch,
    page,
    server,
    step_row,
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
