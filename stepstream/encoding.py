"""The one JSON encoder for everything that leaves the process. It never raises.

Strict JSON (no NaN or Infinity) as UTF-8. Values that strict JSON cannot carry are replaced
visibly instead of failing the whole response or stream: a lone surrogate by U+FFFD, a non-finite
float by null, anything else by its (bounded) text. The fast path is a plain `json.dumps`; the
repair walk runs only when that fails.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .text import bounded, clean, safe_str

_MAX_DEPTH = 200  # deeper values are cut: nothing the store holds nests this deep


def _repair(value: Any, depth: int = 0) -> Any:
    if depth > _MAX_DEPTH:
        return "[nested too deep]"
    if isinstance(value, str):
        return clean(value)
    if value is None or isinstance(value, bool | int):
        return value if not isinstance(value, int) or value.bit_length() < 4000 else safe_str(value)[:40] + "…"
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {clean(k) if isinstance(k, str) else safe_str(k): _repair(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_repair(v, depth + 1) for v in value]
    return bounded(safe_str(value), 200)


# Characters that JSON leaves raw but that many line readers (Python's str.splitlines, httpx's
# iter_lines) take for line breaks: escaped, so one event's data is one line for every client.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _one_line(text: str) -> str:
    return text if text.isascii() else text.translate(_LINE_BREAKS)


# One encoder for every call: json.dumps with non-default options builds a new one each time,
# which was half the cost of encoding an event.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def dumps(value: Any) -> str:
    """Compact strict JSON text of `value` on one line, repaired where needed; always encodable
    as UTF-8."""
    try:
        text = _ENCODER.encode(value)
        if not text.isascii():
            text.encode("utf-8")  # a lone surrogate fails here and is repaired below
            text = _one_line(text)
        return text
    except Exception:  # noqa: BLE001 - repaired below; RecursionError is an Exception too
        pass
    try:
        return _one_line(_ENCODER.encode(_repair(value)))
    except Exception:  # noqa: BLE001 - the last resort keeps a stream alive
        return json.dumps({"error": "unencodable value"})


def dumps_bytes(value: Any) -> bytes:
    return dumps(value).encode("utf-8")


def call_summary(args: tuple, kwargs: dict, limit: int = 80) -> str:
    """A child's arguments in one short line (`"https://a.example/x", depth=2`), to tell one
    child from another; never raises (each value as the one total encoder writes it)."""
    if not args and not kwargs:
        return ""
    try:
        if not kwargs:  # the usual call: plain values, encoded at once (the total path only if need be)
            try:
                text = clean(json.dumps(args, ensure_ascii=False, allow_nan=False, separators=(", ", ":"))[1:-1])
            except (TypeError, ValueError):
                text = ", ".join(dumps(a) for a in args)
        else:
            text = ", ".join([dumps(a) for a in args] + [f"{safe_str(k)}={dumps(v)}" for k, v in dict(kwargs).items()])
    except BaseException:  # noqa: BLE001 - arguments that cannot even be iterated
        return "…"
    return text if len(text) <= limit else text[: limit - 1] + "…"
