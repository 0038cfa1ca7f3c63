"""Job params: strict JSON, checked at the boundary before anything is created.

Params must survive a round trip through strict JSON unchanged in meaning: objects with string
keys, arrays, strings without lone surrogates, finite numbers, booleans and null; nested at most
`max_depth` deep and at most `max_bytes` once serialised. Anything else raises
`InvalidParams` (a ValueError). The store keeps its own copy and each
handler gets another, so no handler can change what the API shows.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .model import InvalidParams

DEFAULT_MAX_DEPTH = 64
DEFAULT_MAX_BYTES = 64 * 1024

_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_text(text: str, where: str) -> None:
    if not text.isascii() and _SURROGATE.search(text):
        raise InvalidParams(f"params{where}: text with a lone surrogate (\\ud800-\\udfff) is not valid JSON text")


def validate(params: Any, *, max_depth: int = DEFAULT_MAX_DEPTH, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """The params serialised as strict JSON, or InvalidParams saying what is wrong and where.

    Walks the value iteratively (no recursion, so any depth is safe to check) before serialising.
    Tuples are accepted as arrays; anything else that JSON would change or reject is refused.
    """
    if not isinstance(params, dict):
        raise InvalidParams(f"params must be a JSON object (a dict), not {type(params).__name__}")
    stack: list[tuple[Any, int, str]] = [(params, 1, "")]
    while stack:
        value, depth, where = stack.pop()
        if isinstance(value, dict):
            if depth > max_depth:
                raise InvalidParams(f"params are nested more than {max_depth} deep")
            for key, item in value.items():
                if not isinstance(key, str):
                    raise InvalidParams(f"params{where}: object keys must be strings, not {type(key).__name__} {key!r}")
                _check_text(key, where)
                stack.append((item, depth + 1, f"{where}[{key!r}]"))
        elif isinstance(value, list | tuple):
            if depth > max_depth:
                raise InvalidParams(f"params are nested more than {max_depth} deep")
            for index, item in enumerate(value):
                stack.append((item, depth + 1, f"{where}[{index}]"))
        elif isinstance(value, str):
            _check_text(value, where)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidParams(f"params{where}: {value} is not a JSON number (NaN and Infinity are not allowed)")
        elif value is None or isinstance(value, bool | int):
            pass
        else:
            raise InvalidParams(f"params{where}: a {type(value).__name__} is not a JSON value")
    try:
        text = json.dumps(params, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError as exc:  # e.g. an int too long to print
        raise InvalidParams(f"params cannot be serialised as JSON: {exc}") from None
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise InvalidParams(f"params are {size} bytes as JSON; the limit is {max_bytes}")
    return text
