"""Finding a Chromium for the browser tests (the fixtures that drive it are in test_page.py).

The browser is `$STEPSTREAM_CHROMIUM`, else the first of the usual Debian/Ubuntu/Chrome paths.
Without one the browser tests skip, unless `$STEPSTREAM_REQUIRE_BROWSER` is set (as in CI):
then they fail, so a missing browser can never pass for green.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_chromium() -> tuple[str | None, str]:
    """The browser to drive, or None and why none was found."""
    chosen = os.environ.get("STEPSTREAM_CHROMIUM")
    if chosen:
        resolved = chosen if os.sep in chosen else shutil.which(chosen)
        if resolved and _executable(resolved):
            return resolved, ""
        return None, f"STEPSTREAM_CHROMIUM={chosen!r} is not an executable file"
    for path in CANDIDATES:
        if _executable(path):
            return path, ""
    return None, (
        f"no Chromium at {', '.join(CANDIDATES)}; install it (apt-get install chromium) or set STEPSTREAM_CHROMIUM"
    )


def _unavailable(reason: str) -> None:
    if os.environ.get("STEPSTREAM_REQUIRE_BROWSER"):
        pytest.fail(f"browser tests required (STEPSTREAM_REQUIRE_BROWSER is set) but {reason}", pytrace=False)
    pytest.skip(reason)
