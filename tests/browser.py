"""Finding a Chromium for the browser tests (the fixtures that drive it are in test_page.py).

The browser is `$STEPSTREAM_CHROMIUM`, else the first of the usual Debian/Ubuntu/Chrome paths.
Without one the browser tests skip, unless `$STEPSTREAM_REQUIRE_BROWSER` is set (as in CI):
then they fail, so a missing browser can never pass for green.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.browser import CANDIDATES, LAUNCH_ARGS, find_chromium  # noqa: F401 - re-exported for the tests

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def _unavailable(reason: str) -> None:
    if os.environ.get("STEPSTREAM_REQUIRE_BROWSER"):
        pytest.fail(f"browser tests required (STEPSTREAM_REQUIRE_BROWSER is set) but {reason}", pytrace=False)
    pytest.skip(reason)
