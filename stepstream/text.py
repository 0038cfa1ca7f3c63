"""Text that is safe to store and send: no unencodable characters, bounded length, and
exceptions described without ever raising.

Every string that enters the store from user code (log lines, error messages, tracebacks, job
names) passes through here first, so nothing downstream (snapshots, listings, the stream) can
fail on it.
"""

from __future__ import annotations

import re
import traceback

_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"

MAX_ERROR_CHARS = 1000  # the one-line `error` of a failed job
MAX_TRACEBACK_CHARS = 16 * 1024  # the last part of a traceback is the useful one
MAX_LOG_CHARS = 64 * 1024  # one log line


def clean(text: str) -> str:
    """`text` with every lone surrogate (e.g. an undecodable byte from `os.listdir`) replaced by
    U+FFFD, so it always encodes as UTF-8. A Python str holds no surrogate pairs: any surrogate
    in it is lone."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return _SURROGATE.sub(REPLACEMENT, text)


def safe_str(value: object, fallback: str = "") -> str:
    """`str(value)`, cleaned; `fallback` (or a description) if `str()` itself raises."""
    try:
        text = value if isinstance(value, str) else str(value)
        if not isinstance(text, str):  # a __str__ returning a non-str raises in str(), but be sure
            raise TypeError
    except BaseException:  # noqa: BLE001 - any object's __str__ may raise anything
        return fallback or f"<unprintable {_type_name(value)}>"
    return clean(text)


def bounded(text: str, limit: int, keep: str = "head") -> str:
    """At most `limit` characters, saying how many were cut; `keep="tail"` keeps the end."""
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    if keep == "tail":
        return f"[{cut} characters cut]\n" + text[-limit:]
    return text[:limit] + f" [{cut} characters cut]"


def _type_name(value: object) -> str:
    try:
        name = type(value).__name__
        return clean(name) if isinstance(name, str) else "object"
    except BaseException:  # noqa: BLE001
        return "object"


def describe(exc: BaseException) -> tuple[str, str | None]:
    """`(error, traceback)` of an exception: `Type: first line of the message` (bounded) and the
    formatted traceback (its last `MAX_TRACEBACK_CHARS`), neither of which ever raises."""
    name = _type_name(exc)
    message = safe_str(exc, fallback="<exception str() failed>")
    first = message.strip().splitlines()[0] if message.strip() else ""
    error = bounded(f"{name}: {first}" if first else name, MAX_ERROR_CHARS)
    try:
        formatted = "".join(traceback.format_exception(exc))
    except BaseException:  # noqa: BLE001 - a broken exception must not break its reporting
        formatted = f"{error}\n(the traceback could not be formatted)"
    return error, bounded(clean(formatted.rstrip("\n")), MAX_TRACEBACK_CHARS, keep="tail")
