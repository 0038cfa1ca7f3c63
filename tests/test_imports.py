"""The core runs without a server: it imports nothing outside the standard library but its one
optional accelerator (orjson, the JSON encoder's fast path), and runs without that too."""

import json
import subprocess
import sys

CORE = ["stepstream", "stepstream.model", "stepstream.events", "stepstream.wire", "stepstream.backends",
        "stepstream.backends.memory", "stepstream.engine", "stepstream.runner", "stepstream.attempt",
        "stepstream.queries", "stepstream.backend", "stepstream.journal", "stepstream.journal.writer",
        "stepstream.journal.sqlite", "stepstream.orchestrator", "stepstream.logs", "stepstream.workers",
        "stepstream.params", "stepstream.text", "stepstream.encoding", "stepstream.loader", "stepstream.jobs",
        "stepstream.history", "stepstream.logbridge", "stepstream.sse", "stepstream.demo", "stepstream.gctuning"]


OPTIONAL = {"orjson"}  # used when installed (a dependency of the package); never required


def test_core_modules_import_only_the_standard_library():
    code = (
        "import sys, json\n"
        "before = set(sys.modules)\n"  # what site hooks loaded at start-up is not ours
        f"for name in {CORE!r}: __import__(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in set(sys.modules) - before})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(json.loads(out))
    outside = loaded - set(sys.stdlib_module_names) - {"stepstream", "__main__"} - OPTIONAL
    assert not outside, f"core imports non-stdlib modules: {sorted(outside)}"
    assert "starlette" not in loaded and "uvicorn" not in loaded


def test_the_core_runs_a_journaled_job_without_its_optional_accelerator(tmp_path):
    code = (
        "import sys\n"
        "sys.modules['orjson'] = None\n"  # as if it were not installed
        "from stepstream import Orchestrator, Step\n"
        "def child(ctx, n): ctx.log('info', f'child {n} \\u2028 done')\n"
        "def fan(ctx):\n"
        "    for n in range(20): ctx.spawn(child, n)\n"
        f"orch = Orchestrator(db={str(tmp_path / 'j.db')!r})\n"
        "orch.define('fan', [Step('fan', fan)])\n"
        "job = orch.start('fan', {'x': 'a\\u2029b'})\n"
        "print(orch.wait(job, 30)['job']['steps'][0]['progress']['completed'])\n"
        "orch.shutdown()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["20"]
