"""Finding a Chromium to drive (for the browser tests and the page benchmark).

The browser is `$STEPSTREAM_CHROMIUM`, else the first of the usual Debian/Ubuntu/Chrome paths.
"""

from __future__ import annotations

import os
import shutil

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
