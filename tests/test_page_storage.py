"""The page says when the server cannot reach its storage, apart from its connection indicator,
and stops saying it once storage answers again (real Chromium, a real uvicorn)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser import ARTIFACTS
from tests.test_page import browser, orch, page, server  # noqa: F401, F811  (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


def test_the_page_says_storage_is_unreachable_while_it_is_and_clears_when_it_is_back(orch, server, page):  # noqa: F811
    failing: list[str] = []
    real = orch.store.check_storage
    orch.store.check_storage = lambda: failing[0] if failing else real()  # what a Redis PING would answer
    page.goto(server.url + "/")
    banner = page.locator("#storage")
    expect(page.locator("[data-connection]")).to_have_attribute("data-connection", "live")
    expect(banner).to_have_attribute("data-storage", "ok")
    expect(banner).to_be_hidden()

    failing.append("Redis at redis://127.0.0.1:6379/0: Connection refused")
    expect(banner).to_have_attribute("data-storage", "degraded", timeout=12_000)
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Storage is unreachable (Redis at redis://127.0.0.1:6379/0: Connection refused)")
    expect(page.locator("[data-connection]")).to_have_attribute("data-connection", "live")  # the stream is up
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "storage-unreachable-1280.png"))

    failing.clear()
    expect(banner).to_have_attribute("data-storage", "ok", timeout=6_000)
    expect(banner).to_be_hidden()
