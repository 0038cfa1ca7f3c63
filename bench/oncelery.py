"""The Celery runner (`orch.use_celery`, `serve --celery`) beside stepstream's own Redis workers and
one process in memory, in the same run.

Throughput: one job whose step spawns N children (~2 ms of pure-Python CPU each, calibrated here;
then no-op children), started and awaited by an orchestrator in this process that runs no work.
Setups, each round interleaved (the machine is shared; each figure is the median of its rounds):
`memory` (one `Orchestrator`, 2 threads), `redis_2` (2 `stepstream worker` processes, 2 threads
each) and `celery_2` (2 `celery -A … worker -c 2` processes, prefork), on a fresh redis-server
(AOF, `appendfsync everysec`) that is both the state and Celery's broker. The figure reported
with it is the wall time from start to the final state; CPU per process group says where the
time goes.

Stream delay: bench/redis.py's probe job (children log `probe <time.time()>` at a steady rate)
run on 2 Celery workers, read by an SSE client of a server process (`serve … --celery`, no work
of its own); baseline in the same run: the same job on 2 `stepstream worker` processes, and on
`serve APP --memory` (one process).

Run alone: `python bench/oncelery.py [--quick]` (not `celery.py`: that name is Celery's).
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import common

rb = common.redis_bench()  # bench/redis.py: hands `redis` over to redis-py before anything imports it

from harness.processes import cli_env  # noqa: E402

CELERY_MODULE = "ssbench_celery_app"
CELERY_SOURCE = f'''
import os

from celery import Celery

from {rb.APP_MODULE} import make

REDIS = os.environ["STEPSTREAM_REDIS"]
celery_app = Celery("ssbench", broker=REDIS)
orch = make()
orch.use_celery(celery_app, redis=REDIS)
'''


@contextlib.contextmanager
def _celery_workers(folder: str, url: str, count: int) -> Iterator[list[subprocess.Popen]]:
    env = cli_env(STEPSTREAM_REDIS=url)
    env["PYTHONPATH"] = os.pathsep.join([folder, env["PYTHONPATH"]])
    started: list[subprocess.Popen] = []
    try:
        for n in range(count):
            # Output to a file, never to a pipe nobody reads: a full pipe stops the worker.
            with open(os.path.join(folder, f"celery-w{n}.log"), "a") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "celery", "-A", f"{CELERY_MODULE}:celery_app", "worker", "-c",
                     str(rb.THREADS), "-n", f"w{n}@%h", "--loglevel=WARNING", "--without-gossip",
                     "--without-mingle", "--without-heartbeat"], cwd=folder, env=env, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True)
            started.append(proc)
        client = sys.modules["redis"].Redis.from_url(url)
        deadline = time.monotonic() + 60
        while len(client.keys("_kombu.binding.*")) == 0 or _children_ready(started) < count:
            if time.monotonic() > deadline:
                raise RuntimeError("celery workers did not start")
            time.sleep(0.2)
        yield started
    finally:
        for proc in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _children_ready(procs: list[subprocess.Popen]) -> int:
    """Workers whose pool processes exist (each worker forks `THREADS` of them once ready)."""
    return sum(len(rb.psutil.Process(p.pid).children()) >= rb.THREADS for p in procs if p.poll() is None)


def _group_cpu(proc: subprocess.Popen) -> float:
    try:
        main = rb.psutil.Process(proc.pid)
        return sum(rb._cpu(p.pid) for p in [main, *main.children(recursive=True)])
    except rb.psutil.Error:
        return float("nan")


def throughput(children: int, loops: int, child: str, repeats: int, log: Callable[[str], None] = print) -> dict:
    params = {"child": child, "children": children, "loops": loops, "spawners": 0}
    setups = ("memory", "redis_2", "celery_2")
    rounds: dict[str, list[dict]] = {key: [] for key in setups}
    with rb._app() as (folder, module):
        with open(os.path.join(folder, CELERY_MODULE + ".py"), "w") as f:
            f.write(CELERY_SOURCE)
        from celery import Celery

        for round_ in range(1, repeats + 1):
            for key in setups:
                cpu: dict[str, float]
                if key == "memory":
                    orch = module.make()
                    try:
                        cpu0 = rb._cpu(os.getpid())
                        wall, _ = rb._run_fan(orch, params)
                        cpu = {"process": rb._cpu(os.getpid()) - cpu0}
                    finally:
                        orch.shutdown()
                elif key == "redis_2":
                    with rb._redis_server("everysec") as server, rb._workers(folder, server.url, 2) as workers, \
                            rb._redis_orchestrator(module, server.url) as orch:
                        pids = {"workers": [w.proc.pid for w in workers], "redis": [server.proc.pid],
                                "bench": [os.getpid()]}
                        before = {k: sum(rb._cpu(p) for p in v) for k, v in pids.items()}
                        wall, _ = rb._run_fan(orch, params)
                        cpu = {k: sum(rb._cpu(p) for p in v) - before[k] for k, v in pids.items()}
                else:
                    with rb._redis_server("everysec") as server, _celery_workers(folder, server.url, 2) as workers:
                        orch = module.make()
                        orch.use_celery(Celery("ssbench-bench", broker=server.url), redis=server.url)
                        try:
                            before = {"workers": sum(_group_cpu(w) for w in workers),
                                      "redis": rb._cpu(server.proc.pid), "bench": rb._cpu(os.getpid())}
                            wall, _ = rb._run_fan(orch, params)
                            cpu = {"workers": sum(_group_cpu(w) for w in workers) - before["workers"],
                                   "redis": rb._cpu(server.proc.pid) - before["redis"],
                                   "bench (dispatcher)": rb._cpu(os.getpid()) - before["bench"]}
                        finally:
                            orch.shutdown()
                rounds[key].append({"wall_s": wall, "cpu_s": cpu})
                log(f"  {child} {key} (round {round_}/{repeats}): {wall:.2f} s, cpu "
                    + ", ".join(f"{k} {v:.1f} s" for k, v in cpu.items()))
    runs = {}
    for key in setups:
        walls = [m["wall_s"] for m in rounds[key]]
        runs[key] = {"wall_s": statistics.median(walls), "walls_s": walls,
                     "children_per_s": children / statistics.median(walls),
                     "cpu_s": {k: statistics.median(m["cpu_s"][k] for m in rounds[key])
                               for k in rounds[key][0]["cpu_s"]}}
    base = runs["memory"]["children_per_s"]
    return {"name": f"celery_throughput_{child}", "children": children, "loops": loops, "repeats": repeats,
            "threads_per_process": rb.THREADS, "runs": runs, "loadavg": open("/proc/loadavg").read().split()[:3],
            "ratios_vs_memory": {k: v["children_per_s"] / base for k, v in runs.items() if k != "memory"},
            "celery_vs_redis": runs["celery_2"]["children_per_s"] / runs["redis_2"]["children_per_s"]}


def _served_delays(folder: str, url: str, workers: list, rate: float, seconds: float, probers: int,
                   *serve: str) -> dict:
    """Probe delays through a server process `serve APP --redis URL …` (no work of its own), and
    the CPU of the server, the workers (with their pool processes) and redis-server meanwhile."""
    with rb._processes(folder, ("serve", *serve, "--redis", url, "--workers", "0", "--port", "0"),
                       ready="serving on ") as (served,):
        cpu0 = {"server": _group_cpu(served.proc), "workers": sum(_group_cpu(w) for w in workers)}
        t0 = time.perf_counter()
        out = rb._delays(rb._base(served), rate, seconds, probers)
        elapsed = time.perf_counter() - t0
        out["cpu_pct"] = {"server": 100 * (_group_cpu(served.proc) - cpu0["server"]) / elapsed,
                          "workers": 100 * (sum(_group_cpu(w) for w in workers) - cpu0["workers"]) / elapsed}
    return out


def stream_delay(rate: float = 200, seconds: float = 10, probers: int = 2, log: Callable[[str], None] = print) -> dict:
    """Probe delay (a log line of a child on a Celery worker -> an SSE client of a server process)
    beside 2 stepstream Redis workers and one process in memory, in the same run."""
    runs: dict[str, dict] = {}
    with rb._app() as (folder, _):
        with open(os.path.join(folder, CELERY_MODULE + ".py"), "w") as f:
            f.write(CELERY_SOURCE)
        with rb._processes(folder, ("serve", rb.APP, "--memory", "--port", "0"), ready="serving on ") as (served,):
            runs["memory"] = rb._delays(rb._base(served), rate, seconds, probers)
        log(f"  memory: {runs['memory']}")
        with rb._redis_server("everysec") as server, rb._workers(folder, server.url, 2) as workers:
            runs["redis_2"] = _served_delays(folder, server.url, [w.proc for w in workers], rate, seconds, probers,
                                             rb.APP)
        log(f"  redis_2: {runs['redis_2']}")
        with rb._redis_server("everysec") as server, _celery_workers(folder, server.url, 2) as workers:
            os.environ["STEPSTREAM_REDIS"] = server.url  # the server imports the Celery module, which reads it
            try:
                runs["celery_2"] = _served_delays(folder, server.url, workers, rate, seconds, probers,
                                                  f"{CELERY_MODULE}:orch", "--celery", f"{CELERY_MODULE}:celery_app")
            finally:
                os.environ.pop("STEPSTREAM_REDIS", None)
        log(f"  celery_2: {runs['celery_2']}")
    return {"name": "celery_stream_delay", "rate": rate, "seconds": seconds, "probers": probers, "runs": runs}


def benchmarks(quick: bool = False) -> list[tuple[str, Callable[[], dict]]]:
    """(label, run) of each Celery benchmark, for bench/run.py."""
    n, repeats = (1_000, 1) if quick else (2_000, 3)
    return [
        ("celery throughput, ~2 ms CPU children", lambda: throughput(n, rb.calibrate(), "spin", repeats)),
        ("celery throughput, no-op children", lambda: throughput(n, 0, "noop", repeats)),
        ("celery stream delay", lambda: stream_delay(seconds=5 if quick else 10)),
    ]


def main() -> None:
    common.run_alone(__doc__, benchmarks)


if __name__ == "__main__":
    main()
