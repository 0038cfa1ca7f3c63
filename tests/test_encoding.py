"""The one JSON encoder (stepstream.encoding): total, one line, and the same JSON whether or not
its optional accelerator (orjson) is installed."""

import datetime
import json
import math
import subprocess
import sys
from decimal import Decimal

import pytest

from stepstream.encoding import dumps, dumps_bytes

LINE_BREAKS = ("\n", "\r", "\x85", "\u2028", "\u2029")


class Text(str):
    pass


class Hostile:
    def __repr__(self):
        raise RuntimeError("no repr for you")

    __str__ = __repr__


deep: list = []
for _ in range(1_000):
    deep = [deep]

VALUES = [
    None, True, 0, -1, 2**63 - 1, 2**63, 2**70, -(2**80), 10**5000, 0.1, 1e16, 1e-7, -0.0,
    math.nan, math.inf, -math.inf,
    "", "plain", "quote \" backslash \\ slash /", "\x00\x01\x1f\x7f", "é ü 中 🙂",
    "a\u2028b\u2029c\x85d\ne\rf", "lone \ud800 surrogate", "\udfff",
    [1, "x", None], (1, 2), {"k": [1, {"n": math.nan}]}, {1: "int key"}, {None: 1},
    {Text("sub"): Text("class")}, Text("a\u2028b"), datetime.datetime(2026, 12, 2, 14, 0),
    Decimal("1.5"), b"bytes", {"set": {1, 2}}, Hostile(), [Hostile()], deep,
    {"job": {"id": "c-1", "progress": {"total": 3, "pending": 0}, "error": "boom\u2029"}},
]


def _decoded(values):
    return [json.loads(dumps(v)) for v in values]


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_every_value_is_encoded_on_one_line_as_strict_json(value):
    text = dumps(value)
    assert not any(c in text for c in LINE_BREAKS), text[:200]
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert dumps_bytes(value) == text.encode("utf-8")


def test_the_encoder_writes_the_same_json_with_or_without_its_accelerator():
    pytest.importorskip("orjson")  # a dependency of the package: installed with it
    code = (
        "import sys, json\n"
        "sys.modules['orjson'] = None\n"  # as if it were not installed
        "sys.path.insert(0, 'tests')\n"
        "import test_encoding\n"
        "import stepstream.encoding as e\n"
        "assert e.orjson is None\n"
        "print(json.dumps(test_encoding._decoded(test_encoding.VALUES)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == json.loads(json.dumps(_decoded(VALUES)))


def test_repaired_values_say_what_they_were():
    assert json.loads(dumps({"x": math.nan, "s": "a\ud800b"})) == {"x": None, "s": "a\ufffdb"}
    assert json.loads(dumps(2**70)) == 2**70
    assert json.loads(dumps(Hostile())).startswith("<")  # its text, bounded, however it fails
