"""What the benchmarks share, so that each of them keeps only what it measures.

- importing it puts the repo root on `sys.path` (benchmarks run as scripts and use `tests/`);
  `arguments`: the command line, the module's docstring as help and `--quick`;
- jobs built through the store alone (`noop`, `add_children`, `run_children`); figures:
  `growth` from the smallest job to the largest, `percentile`;
- server processes: `start_server` inside one (uvicorn in a thread, then `READY <port>`),
  `exit_server`; `ServerProcess` drives one from the benchmark; `raise_open_files`.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
if ROOT not in sys.path:  # a script's own folder is on the path, the repo root is not
    sys.path.insert(0, ROOT)

if TYPE_CHECKING:
    from stepstream import Orchestrator
    from stepstream.backends.memory import Job, MemoryStore


def arguments(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's command line: its module docstring as `--help`, and `--quick`."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter points")
    return parser


def redis_bench() -> Any:
    """bench/redis.py as the module `bench_redis` (loaded once, by file: the name `redis` is
    redis-py's), for the benchmarks that build on it; loading it hands `redis` over to redis-py
    first (see bench/redis.py)."""
    module = sys.modules.get("bench_redis")  # loaded already (by bench/run.py, or another module)
    if module is None:
        import importlib.util

        spec = importlib.util.spec_from_file_location("bench_redis", os.path.join(os.path.dirname(
            os.path.realpath(__file__)), "redis.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_redis"] = module
        spec.loader.exec_module(module)
    return module


def run_alone(doc: str | None, benchmarks: Callable[[bool], list[tuple[str, Callable[[], dict]]]]) -> None:
    """A benchmark module run by itself: each of its `benchmarks(quick)` labelled, its result
    as JSON, with the machine's load average before and after."""
    args = arguments(doc).parse_args()
    print("loadavg before:", open("/proc/loadavg").read().strip(), flush=True)
    for label, run in benchmarks(args.quick):
        print(f"{label} ...", flush=True)
        print(json.dumps(run(), indent=1), flush=True)
    print("loadavg after:", open("/proc/loadavg").read().strip(), flush=True)


# ---------------------------------------------------------------- jobs and figures


def noop(ctx: Any) -> None:  # pragma: no cover - a child or step that does nothing
    pass


def add_children(store: MemoryStore, step: Job, count: int) -> list[Job]:
    """`count` pending no-op children in `step`, straight through the store (no thread pool)."""
    return [store.add_child(noop, (), {}, 0, step_id=step.id)[0] for _ in range(count)]


def run_children(store: MemoryStore, step: Job, count: int) -> None:
    """`count` children in `step`, each created, started and completed (3 transitions) before
    the next one is created."""
    for _ in range(count):
        child = store.add_child(noop, (), {}, 0, step_id=step.id)[0]
        store.begin_child(child)
        store.end_child(child, None)


def growth(rows: list[dict], ours: str, baseline: str) -> dict:
    """How a figure grows from the first (smallest) row to the last, ours and the baseline's."""
    small, large = rows[0], rows[-1]
    return {"ratio_large_small": large[ours] / small[ours],
            "baseline_ratio_large_small": large[baseline] / small[baseline]}


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile (0..1) of `values`; infinite when there are none."""
    if not values:
        return float("inf")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ---------------------------------------------------------------- server processes


def raise_open_files() -> None:
    """Soft open-files limit up to the hard one: hundreds of stream clients (and their server)
    need more descriptors than the usual 1,024."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def start_server(app: Any, port: int = 0, runner: Callable[[Callable[[], None]], Any] | None = None,
                 **config: Any) -> int:
    """Serve `app` with uvicorn on 127.0.0.1 in a daemon thread (`runner(server.run)` if given,
    e.g. a profiler's `runcall`), then print `READY <port>` for `ServerProcess`. Returns the port."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off", timeout_graceful_shutdown=1, **config))
    thread = threading.Thread(target=server.run if runner is None else lambda: runner(server.run), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:  # uvicorn offers a flag, not an event
        if not thread.is_alive() or time.monotonic() > deadline:
            sys.exit("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    return port


def exit_server(orch: Orchestrator) -> None:
    """End a server process now: clients may still be connected, no graceful shutdown to wait for."""
    orch.shutdown(wait=False)
    os._exit(0)


class ServerProcess:
    """`python bench/<script> <args>` in a subprocess that serves on the port it announces
    (`start_server`), then reads one command a line on stdin and answers on stdout; `close()`
    sends `quit`. Usable as a context manager."""

    def __init__(self, script: str, *args: str, startup: float = 30) -> None:
        import psutil  # the `bench` extra: tests/test_soak.py imports this module without it

        self.name = " ".join((script, *args))
        self.proc = subprocess.Popen([sys.executable, os.path.join(BENCH, script), *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            words = self.line(startup).split()
            if words[:1] != ["READY"]:
                raise RuntimeError(f"{self.name}: server did not start: {words}")
        except BaseException:
            self.close()
            raise
        self.port = int(words[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.ps = psutil.Process(self.proc.pid)

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self._lines.put(line)
        self._lines.put("")  # end of output: the process is gone

    def line(self, timeout: float) -> str:
        """The next line the server prints; TimeoutError after `timeout` s of silence."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.name}: server said nothing for {timeout} s") from None
        if not line:
            raise RuntimeError(f"{self.name}: server exited ({self.proc.poll()})")
        return line

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def cpu(self) -> float:
        """CPU seconds (user + system) the server process has used so far."""
        times = self.ps.cpu_times()
        return times.user + times.system

    def written(self) -> int:
        """Bytes the server process has sent to storage so far (its writes to files)."""
        return self.ps.io_counters().write_bytes

    def close(self) -> None:
        try:
            self.send("quit")
            self.proc.wait(10)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
