"""Redis storage (`stepstream serve|worker --redis`, `Orchestrator.use_redis`) side by side with
one process in memory, in the same run.

- throughput: one job whose step spawns N children (`ctx.spawn`), run by `python -m stepstream
  worker APP --redis URL --workers 2` in 1 and in 2 processes, started and awaited by an
  orchestrator in this process that runs no work (`use_redis(url, workers=0)`); children that
  spin ~2 ms of pure Python (calibrated once here), then children that do nothing. Baseline:
  the same job in one `Orchestrator` in memory (2 threads). Transitions as in bench/core.py's
  throughput: 3 per child (created, running, completed). The machine is shared, so the round
  (memory, then each Redis setup) runs 3 times, interleaved, and each setup's figure is the
  median of its rounds; Redis with `appendfsync everysec` (Redis's default with AOF) and `always`;
- stream delay: children on a worker process log `probe <time.time()>` at a moderate rate; an
  SSE client of ANOTHER process (`serve APP --redis URL --workers 0`) measures receive time
  minus that time. Baseline: the same job and client against `serve APP --memory` (one process);
- Redis memory: INFO used_memory growth (a fresh redis-server each; a small job first, then the
  baseline) for a job of N retained no-op children, and for N log lines, per 100,000.

Every redis-server is harness/redisserver.py's (AOF on, `appendfsync always`; `everysec` set with
CONFIG SET where a run says so), fresh for each measurement. The APP is written
to a temporary folder; workers and servers run with that folder as their current directory.

Run alone: `python bench/redis.py [--quick]`; `bench/run.py` runs it with the others.

This file's name is also redis-py's: a script in bench/ (which has bench/ first on `sys.path`)
that imports `redis` would find this file. The first lines below make that harmless.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys


def _redis_py():
    """redis-py (the real package), imported once and registered as `redis`."""
    here = os.path.dirname(os.path.realpath(__file__))
    path = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != here]
    spec = importlib.machinery.PathFinder.find_spec("redis", path)
    if spec is None:
        raise ImportError("redis-py is not installed (pip install redis)")
    module = importlib.util.module_from_spec(spec)
    sys.modules["redis"] = module
    spec.loader.exec_module(module)
    return module


if __name__ == "redis":  # imported as `redis` (found first on the path): hand over to redis-py
    _redis_py()
elif not getattr(sys.modules.get("redis"), "Redis", None):  # before stepstream or tests import it
    _redis_py()

import contextlib  # noqa: E402 - after the hand-over above
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402

if __name__ != "redis":  # the benchmark itself (imported as `redis`, the rest only defines functions)
    import common
    import httpx
    import psutil

    from harness.processes import Served, base_of
    from harness.redisserver import RedisServer  # not tests/: a benchmark does not import the test suite
    from stepstream import Orchestrator

APP_MODULE = "ssbench_redis_app"
APP = f"{APP_MODULE}:make"
THREADS = 2  # worker threads per process: a worker process's, and the in-memory baseline's
CHILD_MS = 2.0  # CPU of one spinning child

APP_SOURCE = '''\
"""The benchmark's APP (written by bench/redis.py): a fresh orchestrator per call of make()."""

import time

from stepstream import Orchestrator, Step


def spin(ctx, loops):
    n = 0
    for i in range(loops):
        n += i
    return n


def noop(ctx):
    pass


def spawner(ctx, child, count, loops):
    for _ in range(count):
        if child == "spin":
            ctx.spawn(spin, loops)
        else:
            ctx.spawn(noop)


def fan_out(ctx):
    p = ctx.params
    start = time.perf_counter()
    if p.get("spawners"):  # a tree: the step spawns spawners, each spawns its share
        for _ in range(p["spawners"]):
            ctx.spawn(spawner, p["child"], p["children"] // p["spawners"], p["loops"])
    else:
        spawner(ctx, p["child"], p["children"], p["loops"])
    ctx.log("info", f"spawned {p['children']} in {time.perf_counter() - start:.4f}")


def prober(ctx, start_at, lines, interval):
    time.sleep(max(0.0, start_at - time.time()))
    for n in range(lines):
        ctx.log("info", f"probe {time.time():.6f}")
        time.sleep(max(0.0, start_at + (n + 1) * interval - time.time()))


def probes(ctx):
    p = ctx.params
    for _ in range(p["probers"]):
        ctx.spawn(prober, p["start_at"], p["lines"], p["interval"])


def writer(ctx, lines):
    for n in range(lines):
        ctx.log("info", f"fetched page {n}: 200 OK, 5,120 bytes in 0.042 s")


def writers(ctx):
    p = ctx.params
    for _ in range(p["writers"]):
        ctx.spawn(writer, p["lines"])


def make():
    orch = Orchestrator(max_workers=THREADS, capture_level=None, max_logs_per_step=1_000_000)
    orch.define("fan", [Step("fan", fan_out)])
    orch.define("probes", [Step("probes", probes)])
    orch.define("lines", [Step("lines", writers)])
    return orch
'''.replace("THREADS", str(THREADS))


# ---------------------------------------------------------------- processes


@contextlib.contextmanager
def _app() -> Iterator[tuple[str, object]]:
    """A temporary folder holding the APP module, imported here too: (folder, module)."""
    folder = tempfile.mkdtemp(prefix="stepstream-bench-redis-")
    try:
        with open(os.path.join(folder, APP_MODULE + ".py"), "w") as f:
            f.write(APP_SOURCE)
        sys.path.insert(0, folder)
        sys.modules.pop(APP_MODULE, None)
        module = importlib.import_module(APP_MODULE)
        yield folder, module
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
        sys.modules.pop(APP_MODULE, None)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _redis_server(fsync: str = "always") -> Iterator[RedisServer]:
    """harness/redisserver.py's redis-server (AOF, `appendfsync always`); `fsync` another policy."""
    server = RedisServer()
    try:
        server.start()
        if fsync != "always":
            with contextlib.closing(server.client()) as client:
                client.config_set("appendfsync", fsync)
        yield server
    finally:
        server.close()


def _stop(served: Served) -> None:
    """Ctrl+C, then kill if it does not exit."""
    if served.proc.poll() is None:
        try:
            served.interrupt(timeout=15)
        except Exception:  # noqa: BLE001 - it did not exit in time: kill it
            served.proc.kill()
            served.proc.wait(10)


@contextlib.contextmanager
def _processes(folder: str, *commands: tuple[str, ...], ready: str) -> Iterator[list[Served]]:
    """`python -m stepstream <command...>` for each of `commands`, in `folder`, each until it
    printed `ready` on stderr; all stopped afterwards."""
    started: list[Served] = []
    try:
        for command in commands:
            started.append(Served(*command[1:], cwd=folder, command=command[0]))
            started[-1].ready = started[-1].wait_for(ready, timeout=60)  # type: ignore[attr-defined]
        yield started
    finally:
        for served in started:
            _stop(served)


def _base(served: Served) -> str:
    """http://127.0.0.1:PORT of a server, from its `serving on` line."""
    return base_of(re.search(r"serving on (http://\S+)", served.ready).group(1))  # type: ignore[attr-defined]


def _workers(folder: str, url: str, count: int) -> contextlib.AbstractContextManager[list[Served]]:
    commands = [("worker", APP, "--redis", url, "--workers", str(THREADS)) for _ in range(count)]
    return _processes(folder, *commands, ready="worker running")


def _cpu(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except psutil.Error:
        return float("nan")


@contextlib.contextmanager
def _redis_orchestrator(module: object, url: str) -> Iterator[Orchestrator]:
    """The APP's orchestrator here, on Redis, running no work."""
    orch = module.make()
    try:
        orch.use_redis(url, workers=0)
        yield orch
    finally:
        orch.shutdown()


# ---------------------------------------------------------------- 1. throughput


def calibrate(ms: float = CHILD_MS) -> int:
    """Loops of the APP's `spin` that take about `ms` here (median of a few: the machine is shared)."""
    with _app() as (_, module):
        loops = 20_000
        for _ in range(2):
            took = statistics.median(_timed(lambda n=loops: module.spin(None, n)) for _ in range(11))
            loops = int(loops * ms / 1000 / took)
    return loops


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _run_fan(orch: Orchestrator, params: dict, timeout: float = 600) -> tuple[float, float]:
    """Seconds from start to the final state of one `fan` job (checks that every child
    completed), and the seconds its step handler took to spawn them."""
    start = time.perf_counter()
    job = orch.start("fan", params)
    final = orch.wait(job, timeout=timeout)
    wall = time.perf_counter() - start
    progress = final["job"]["progress"]
    if final["job"]["status"] != "completed" or progress["completed"] != params["children"] + params["spawners"]:
        raise RuntimeError(f"fan job ended {final['job']['status']} with {progress}")
    spawned = [r["message"] for r in orch.logs(job, step="fan")["logs"] if r["message"].startswith("spawned ")]
    return wall, float(spawned[0].split()[-1])


def throughput(children: int = 2_000, loops: int | None = None, processes: tuple[int, ...] = (1, 2),
               child: str = "spin", fsync: tuple[str, ...] = ("everysec", "always"), spawners: int = 0,
               log: Callable[[str], None] = print, child_ms: float = CHILD_MS, repeats: int = 3) -> dict:
    """The `fan` job of `children` children of kind `child` (spin: `loops` of the APP's loop,
    ~2 ms of CPU; noop), in memory (one process, `THREADS` threads), then through Redis with each
    count of worker processes (`THREADS` threads each) and each AOF fsync policy. With
    `spawners`, the step spawns that many children that spawn the others (they count too).

    The machine is shared, so the whole round (memory, then each Redis setup) runs `repeats`
    times, interleaved; each setup's figures are the median of its rounds."""
    params = {"child": child, "children": children, "loops": loops or 0, "spawners": spawners}
    setups = [("memory", "", 0)] + [(f"redis_{count}" + ("" if policy == "always" else f"_{policy}"), policy, count)
                                     for policy in fsync for count in processes]
    rounds: dict[str, list[dict]] = {key: [] for key, _, _ in setups}
    with _app() as (folder, module):
        for round_ in range(1, repeats + 1):
            for key, policy, count in setups:
                if key == "memory":
                    orch = module.make()
                    try:
                        cpu0 = _cpu(os.getpid())
                        wall, spawn_s = _run_fan(orch, params)
                        cpu = {"process": _cpu(os.getpid()) - cpu0}
                    finally:
                        orch.shutdown()
                else:
                    with _redis_server(policy) as server, _workers(folder, server.url, count) as workers, \
                            _redis_orchestrator(module, server.url) as orch:
                        pids = {"workers": [w.proc.pid for w in workers], "redis": [server.proc.pid],
                                "bench": [os.getpid()]}
                        before = {k: sum(_cpu(p) for p in v) for k, v in pids.items()}
                        wall, spawn_s = _run_fan(orch, params)
                        cpu = {k: sum(_cpu(p) for p in v) - before[k] for k, v in pids.items()}
                rounds[key].append({"wall_s": wall, "spawn_s": spawn_s, "cpu_s": cpu})
                log(f"  {child} {key} (round {round_}/{repeats}): {wall:.2f} s (spawned in {spawn_s:.2f} s), cpu "
                    + ", ".join(f"{k} {v:.1f} s" for k, v in cpu.items()))
    transitions = 3 * (children + spawners)  # created, running, completed (bench/core.py's job_wall_time)
    runs: dict[str, dict] = {}
    for key, policy, count in setups:
        measured = rounds[key]
        walls = [m["wall_s"] for m in measured]
        runs[key] = {"wall_s": statistics.median(walls), "walls_s": walls,
                     "spawn_s": statistics.median(m["spawn_s"] for m in measured),
                     "cpu_s": {k: statistics.median(m["cpu_s"][k] for m in measured) for k in measured[0]["cpu_s"]}}
        if key != "memory":
            runs[key].update(processes=count, fsync=policy)
        runs[key]["transitions_per_s"] = transitions / runs[key]["wall_s"]
        runs[key]["children_per_s"] = (children + spawners) / runs[key]["wall_s"]
    base = runs["memory"]["transitions_per_s"]
    name = f"redis_throughput_{child}" + ("" if child_ms == CHILD_MS else f"_{child_ms:g}ms")
    return {"name": name + (f"_tree{spawners}" if spawners else ""), "child": child,
            "children": children, "spawners": spawners, "loops": loops,
            "child_ms": child_ms if child == "spin" else 0.0, "threads_per_process": THREADS,
            "transitions_per_child": 3, "repeats": repeats, "runs": runs, "baseline_transitions_per_s": base,
            "ratios": {k: v["transitions_per_s"] / base for k, v in runs.items() if k != "memory"}}


# ---------------------------------------------------------------- 2. stream delay


class _Client:
    """One `GET /api/events?job=ID` on httpx, in a thread: delays of `probe` log events."""

    def __init__(self, base: str, job_id: str, timeout: float) -> None:
        self.url = f"{base}/api/events?job={job_id}"
        self.timeout = timeout
        self.delays: list[float] = []
        self.events = 0
        self.ended = threading.Event()
        self.snapshot = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + self.timeout
        try:
            with httpx.stream("GET", self.url, timeout=httpx.Timeout(30, read=30)) as answer:
                answer.raise_for_status()
                kind = None
                for line in answer.iter_lines():
                    now = time.time()
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: ") and kind is not None:
                        self.events += 1
                        if kind == "log":
                            message = json.loads(line[6:])["message"]
                            if message.startswith("probe "):
                                self.delays.append(now - float(message[6:]))
                        elif kind == "snapshot":
                            self.snapshot.set()
                        elif kind == "end":
                            return
                    elif not line:
                        kind = None
                    if time.monotonic() > deadline:
                        return
        except BaseException as exc:  # noqa: BLE001 - reported by the benchmark
            self.error = exc
        finally:
            self.ended.set()


def _start_job(base: str, definition: str, params: dict) -> str:
    answer = httpx.post(f"{base}/api/jobs", json={"definition": definition, "params": params}, timeout=60)
    answer.raise_for_status()
    body = answer.json()
    return body["job"]["id"] if "job" in body else body["id"]


def _delays(base: str, rate: float, seconds: float, probers: int) -> dict:
    """One `probes` job: `probers` children log `rate` probes/s in all for `seconds`."""
    lines = int(rate * seconds / probers)
    params = {"probers": probers, "lines": lines, "interval": probers / rate, "start_at": time.time() + 1.5}
    job = _start_job(base, "probes", params)
    client = _Client(base, job, timeout=seconds + 60)
    if not client.snapshot.wait(10):
        raise RuntimeError(f"no snapshot from {base} within 10 s ({client.error!r})")
    if time.time() > params["start_at"]:
        raise RuntimeError("the client connected after the probes started: raise start_at")
    client.ended.wait(seconds + 60)
    if client.error is not None:
        raise RuntimeError(f"stream client failed: {client.error!r}")
    expected = lines * probers
    ms = [d * 1000 for d in client.delays]
    return {"probes": expected, "received": len(ms), "events": client.events,
            "p50_ms": common.percentile(ms, 0.50) if len(ms) == expected else float("inf"),
            "p99_ms": common.percentile(ms, 0.99) if len(ms) == expected else float("inf"),
            "max_ms": max(ms) if ms else float("inf"), "mean_ms": statistics.fmean(ms) if ms else float("inf")}


def stream_delay(rate: float = 200, seconds: float = 10, probers: int = 2,
                 log: Callable[[str], None] = print) -> dict:
    """Probe delay (log on a worker process → SSE client of another server process) through
    Redis; baseline: the same job and client on `serve APP --memory` (one process)."""
    with _app() as (folder, _):
        with _processes(folder, ("serve", APP, "--memory", "--port", "0"), ready="serving on ") as (served,):
            cpu0, t0 = _cpu(served.proc.pid), time.perf_counter()
            memory = _delays(_base(served), rate, seconds, probers)
            memory["cpu_pct"] = {"server": 100 * (_cpu(served.proc.pid) - cpu0) / (time.perf_counter() - t0)}
        log(f"  memory: {memory}")
        with _redis_server() as server, _workers(folder, server.url, 1) as (worker,), \
                _processes(folder, ("serve", APP, "--redis", server.url, "--workers", "0", "--port", "0"),
                           ready="serving on ") as (served,):
            base = _base(served)
            cpu0 = {"server": _cpu(served.proc.pid), "worker": _cpu(worker.proc.pid), "redis": _cpu(server.proc.pid)}
            t0 = time.perf_counter()
            redis_run = _delays(base, rate, seconds, probers)
            elapsed = time.perf_counter() - t0
            redis_run["cpu_pct"] = {k: 100 * (_cpu(p) - cpu0[k]) / elapsed for k, p in
                                    (("server", served.proc.pid), ("worker", worker.proc.pid),
                                     ("redis", server.proc.pid))}
        log(f"  redis: {redis_run}")
    return {"name": "redis_stream_delay", "rate": rate, "seconds": seconds, "probers": probers,
            "redis": redis_run, "memory": memory,
            "added_p50_ms": redis_run["p50_ms"] - memory["p50_ms"],
            "added_p99_ms": redis_run["p99_ms"] - memory["p99_ms"]}


# ---------------------------------------------------------------- 3. memory


def _unlink_once_keys(client) -> int:
    """Delete the `once:*` keys (a change's idempotency marks, which expire by themselves after
    some minutes); how many there were."""
    keys = list(client.scan_iter("stepstream:once:*", count=5000))
    for start in range(0, len(keys), 5000):
        client.unlink(*keys[start:start + 5000])
    return len(keys)


def redis_memory(children: int = 10_000, lines: int = 10_000, writers: int = 10, processes: int = 2,
                 log: Callable[[str], None] = print) -> dict:
    """used_memory growth for one finished job of `children` no-op children, and (another fresh
    redis-server) for `lines` log lines written by `writers` children; per 100,000. A small job
    of the same kind runs first, so scripts and what exists once are in the baseline. Split:
    the event stream (MEMORY USAGE), the `once:*` keys (deleted at the end to see them), the rest."""
    out: dict = {}
    with _app() as (folder, module):
        for what, definition, params, count in (
                ("children", "fan", {"child": "noop", "children": children, "loops": 0}, children),
                ("lines", "lines", {"writers": writers, "lines": lines // writers}, lines // writers * writers)):
            with _redis_server() as server, _workers(folder, server.url, processes), \
                    _redis_orchestrator(module, server.url) as orch, contextlib.closing(server.client()) as client:
                warm = dict(params, **({"children": 10} if what == "children" else {"lines": 10}))
                orch.wait(orch.start(definition, warm), timeout=120)
                time.sleep(0.5)  # the last acknowledgements
                _unlink_once_keys(client)
                before = server.memory_used()
                events_before = int(client.memory_usage("stepstream:events", samples=0))
                xlen_before = client.xlen("stepstream:events")
                t0 = time.perf_counter()
                job = orch.start(definition, params)
                final = orch.wait(job, timeout=900)
                wall = time.perf_counter() - t0
                if final["job"]["status"] != "completed":
                    raise RuntimeError(f"{what} job ended {final['job']['status']}")
                time.sleep(0.5)
                after = server.memory_used()
                events = int(client.memory_usage("stepstream:events", samples=0)) - events_before
                event_count = client.xlen("stepstream:events") - xlen_before
                once_keys = _unlink_once_keys(client)
                time.sleep(0.2)
                without_once = server.memory_used()
                info = client.info("memory")
                logged = len(orch.logs(job, limit=1_000_000)["logs"]) if what == "lines" else None
            per = 100_000 / count
            out[what] = {"count": count, "wall_s": wall, "per_s": count / wall, "used_memory_before": before,
                         "used_memory_after": after, "bytes_per_100k": (after - before) * per,
                         "events": event_count, "events_bytes_per_100k": events * per,
                         "once_keys": once_keys, "once_bytes_per_100k": (after - without_once) * per,
                         "rest_bytes_per_100k": (without_once - before - events) * per,
                         "fragmentation_ratio": info.get("mem_fragmentation_ratio"), "lines_read_back": logged}
            log(f"  {what}: {count:,} in {wall:.1f} s, {(after - before) * per / 2**20:.1f} MB per 100k "
                f"(events {events * per / 2**20:.1f} MB, once keys {(after - without_once) * per / 2**20:.1f} MB)")
    return {"name": "redis_memory", "processes": processes, "threads_per_process": THREADS,
            "children": out["children"], "lines": out["lines"]}


# ---------------------------------------------------------------- all of it


def _source() -> dict:
    """The commit, and the files under stepstream/ changed since (being edited meanwhile)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=common.ROOT, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "modified": git("status", "--porcelain", "stepstream").splitlines()}


def benchmarks(quick: bool = False) -> list[tuple[str, Callable[[], dict]]]:
    """(label, run) of each Redis benchmark, full or quick, for bench/run.py."""

    loops: list[int] = []

    def spin(spawners: int = 0) -> dict:
        if not loops:
            loops.append(calibrate())
        return throughput(1_000 if quick else 2_000, loops[0], child="spin", spawners=spawners,
                          fsync=("everysec", "always") if not spawners else ("everysec",), repeats=1 if quick else 3)

    def spin10() -> dict:
        return throughput(300 if quick else 600, calibrate(10.0), child="spin", child_ms=10.0, fsync=("everysec",),
                          repeats=1 if quick else 3)

    def stamped(run: Callable[[], dict]) -> Callable[[], dict]:
        return lambda: {**run(), "source": _source()}

    return [(label, stamped(run)) for label, run in [
        ("redis throughput, ~2 ms CPU children", spin),
        ("redis throughput, ~2 ms CPU children spawned by 20 children", lambda: spin(20)),
        ("redis throughput, ~10 ms CPU children", spin10),
        ("redis throughput, no-op children",
         lambda: throughput(1_000 if quick else 2_000, child="noop", repeats=1)),
        ("redis stream delay", lambda: stream_delay(seconds=4 if quick else 10)),
        ("redis memory", lambda: redis_memory(*((2_000, 2_000) if quick else (10_000, 10_000)))),
    ]]


def main() -> None:
    args = common.arguments(__doc__).parse_args()
    for label, run in benchmarks(args.quick):
        print(f"{label} ...", flush=True)
        print(json.dumps(run(), indent=1), flush=True)


if __name__ == "__main__":
    main()
