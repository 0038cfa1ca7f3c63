"""The one JSON encoder for everything that leaves the process. It never raises.

Strict JSON (no NaN or Infinity) as UTF-8. Values that strict JSON cannot carry are replaced
visibly instead of failing the whole response or stream: a lone surrogate by U+FFFD, a non-finite
float by null, anything else by its (bounded) text. The fast path is orjson (about 10x the
standard library's encoder: every event, row and response goes through here), taking only the
plain JSON types; anything else it refuses (a subclass, a datetime, a lone surrogate, an integer
beyond 64 bits, nesting deeper than its limit) goes the standard library's way, and the repair
walk runs only when that fails too.
"""

from __future__ import annotations

import json
import math
from typing import Any

try:  # an optional accelerator: the core runs on the standard library alone
    import orjson
except ImportError:  # pragma: no cover - exercised by tests/test_imports.py
    orjson = None  # type: ignore[assignment]

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


def _one_line_bytes(data: bytes) -> bytes:
    """`_one_line` on UTF-8: each of these sequences can only be its character (it starts with a
    lead byte), so replacing the bytes is exact."""
    if data.isascii():
        return data
    return data.replace(b"\xc2\x85", b"\\u0085").replace(b"\xe2\x80\xa8", b"\\u2028").replace(
        b"\xe2\x80\xa9", b"\\u2029")


# Values of these kinds go to the standard library's path (which writes them as it always has)
# instead of orjson's own rendering of them.
_ORJSON_OPTIONS = (orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
                   if orjson is not None else 0)


# One encoder for every call: json.dumps with non-default options builds a new one each time,
# which was half the cost of encoding an event.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def dumps(value: Any) -> str:
    """Compact strict JSON text of `value` on one line, repaired where needed; always encodable
    as UTF-8."""
    fast = _fast_dumps(value)
    return fast.decode("utf-8") if fast is not None else _standard_dumps(value)


def dumps_bytes(value: Any) -> bytes:
    """`dumps` as UTF-8."""
    fast = _fast_dumps(value)
    return fast if fast is not None else _standard_dumps(value).encode("utf-8")


def _fast_dumps(value: Any) -> bytes | None:
    """orjson's UTF-8, or None: orjson is not installed, or `value` is not plain JSON types."""
    if orjson is None:
        return None
    try:
        return _one_line_bytes(orjson.dumps(value, option=_ORJSON_OPTIONS))
    except Exception:  # noqa: BLE001 - the standard library's path takes it
        return None


def _standard_dumps(value: Any) -> str:
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
