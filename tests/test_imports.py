"""The core runs without a server: it imports nothing outside the standard library."""

import json
import subprocess
import sys

CORE = ["stepstream", "stepstream.model", "stepstream.events", "stepstream.wire", "stepstream.backends",
        "stepstream.backends.memory", "stepstream.engine", "stepstream.runner", "stepstream.attempt",
        "stepstream.queries", "stepstream.backend", "stepstream.journal", "stepstream.journal.writer",
        "stepstream.journal.sqlite", "stepstream.orchestrator", "stepstream.logs", "stepstream.workers",
        "stepstream.params", "stepstream.text", "stepstream.encoding", "stepstream.loader", "stepstream.jobs",
        "stepstream.history", "stepstream.logbridge", "stepstream.sse", "stepstream.demo"]


def test_core_modules_import_only_the_standard_library():
    code = (
        "import sys, json\n"
        "before = set(sys.modules)\n"  # what site hooks loaded at start-up is not ours
        f"for name in {CORE!r}: __import__(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in set(sys.modules) - before})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(json.loads(out))
    outside = loaded - set(sys.stdlib_module_names) - {"stepstream", "__main__"}
    assert not outside, f"core imports non-stdlib modules: {sorted(outside)}"
    assert "starlette" not in loaded and "uvicorn" not in loaded
