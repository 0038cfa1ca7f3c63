"""How far one Redis carries a deployment, and two Redis shards beside one, in the same run.

- ceiling: redis-server's own CPU (`INFO cpu`: the whole process, and its main thread, which runs
  every script) per child and per log line, at the batching the workers do today. A fresh
  redis-server (AOF, `appendfsync everysec`; one run with `always`) and 2 `python -m stepstream
  worker APP --redis URL --workers 2` processes (bench/redis.py's APP, helpers and redis-server);
  an orchestrator in this process on `use_redis(url, workers=0)` starts and awaits the job. A small
  job of the same kind runs first (scripts loaded, group made). Jobs: N no-op children (the
  `fan` job), then N children that each log 10 lines of ~50 characters (the `lines` job).
  From those: the children/s and lines/s one saturated Redis main thread would carry
  (1 / CPU per child, 1 / CPU per line), and what the stream keys hold: events per child, bytes per
  event (`MEMORY USAGE ... SAMPLES 0` of the events stream), `once:*` keys per child and their bytes;
  and what following the stream costs a process (every event read and decoded as its tail thread
  does, timed on this thread: CPU per event), which every server pays for every event;
- shards: the same total of no-op children split over 4 jobs, on one redis-server with 2 worker
  processes, and on two redis-servers with 1 worker process each (each half of the jobs on its own
  Redis with its own workers, as two independent deployments would be); the jobs all start
  together; total children/s from the first start to the last end; redis-server CPU per child in
  each; and the machine's busy share meanwhile (`psutil.cpu_times`, all processes: the cores are
  what two shards share here). Rounds interleaved, medians (the machine is shared). A third
  setup tells apart what only the jobs per Redis change: one redis-server, 2 worker processes,
  half as many jobs of twice the size (as many jobs per Redis as each of the two shards has).

Run alone: `python bench/scaling.py [--quick]`; `bench/run.py` runs it with the others (labels
`scaling …`).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import common

rb = common.redis_bench()  # bench/redis.py: hands `redis` over to redis-py before anything imports it
import psutil  # noqa: E402

PREFIX = "stepstream:"  # the default key prefix (the worker command line has no other)
LINES = 10  # log lines per child of the `lines` job


def _redis_cpu(client) -> dict[str, float]:
    """redis-server's CPU seconds so far, by its own account: the process, and its main thread."""
    info = client.info("cpu")
    return {"process": info["used_cpu_user"] + info["used_cpu_sys"],
            "main_thread": info["used_cpu_user_main_thread"] + info["used_cpu_sys_main_thread"]}


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, every process included."""
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    return sum(t) - idle, sum(t)


@dataclass
class Shard:
    """One deployment: a redis-server, its worker processes, an orchestrator here that runs no work."""

    server: object
    workers: list
    orch: object
    client: object

    def worker_cpu(self) -> float:
        return sum(rb._cpu(w.proc.pid) for w in self.workers)


@contextlib.contextmanager
def _shard(folder: str, module: object, workers: int, fsync: str = "everysec") -> Iterator[Shard]:
    with rb._redis_server(fsync) as server, rb._workers(folder, server.url, workers) as procs, \
            rb._redis_orchestrator(module, server.url) as orch, contextlib.closing(server.client()) as client:
        yield Shard(server, procs, orch, client)


def _params(kind: str, children: int, loops: int = 0) -> tuple[str, dict]:
    """(definition, params) of a job of `children` children: `noop`, `spin` or `lines` (each logs `LINES`)."""
    if kind == "lines":
        return "lines", {"writers": children, "lines": LINES}
    return "fan", {"child": kind, "children": children, "loops": loops, "spawners": 0}


def _warm(shard: Shard, kind: str) -> None:
    """A small job of the same kind first: scripts loaded, the group made, what exists once made."""
    definition, params = _params(kind, 10)
    final = shard.orch.wait(shard.orch.start(definition, params), timeout=120)
    if final["job"]["status"] != "completed":
        raise RuntimeError(f"warm-up job ended {final['job']['status']}")
    time.sleep(0.3)  # the last acknowledgements


def _run(plan: list[tuple[Shard, str, dict, int]], timeout: float = 900) -> tuple[float, dict[int, float]]:
    """Start every job of `plan` ((shard, definition, params, children)) at once, wait for all of
    them (a thread each); (seconds to the last end, {id(shard): seconds to that shard's last end}).
    Every job must complete with all its children."""
    ends: dict[int, float] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = time.perf_counter()
    jobs = [(shard, shard.orch.start(definition, params), children) for shard, definition, params, children in plan]

    def wait(shard: Shard, job: str, children: int) -> None:
        try:
            final = shard.orch.wait(job, timeout=timeout)
            done = time.perf_counter() - start
            progress = final["job"]["progress"]
            if final["job"]["status"] != "completed" or progress["completed"] != children:
                raise RuntimeError(f"job ended {final['job']['status']} with {progress}")
            with lock:
                ends[id(shard)] = max(ends.get(id(shard), 0.0), done)
        except BaseException as exc:  # noqa: BLE001 - raised below
            errors.append(exc)

    threads = [threading.Thread(target=wait, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return max(ends.values()), ends


def _follow_cost(client) -> tuple[int, float]:
    """Every event in the stream read and decoded as a process's tail does (`XREAD` of 5,000 at a
    time, its reply left as parsed, `codec.event_from` on each entry), on this thread:
    (events, CPU seconds of this thread)."""
    from stepstream.backends.redis import codec

    raw = sys.modules["redis"].Redis(connection_pool=client.connection_pool)  # redis-py (see bench/redis.py)
    raw.set_response_callback("XREAD", lambda response, **options: response)
    after, count = "0-0", 0
    started = time.thread_time()
    while True:
        reply = raw.xread({PREFIX + "events": after}, count=5000) or []
        streams = reply.values() if isinstance(reply, dict) else [entries for _, entries in reply]
        fresh = [entry for entries in streams for entry in entries]
        if not fresh:
            break
        for entry_id, fields in fresh:
            codec.event_from(entry_id, fields)
        count += len(fresh)
        after = fresh[-1][0]
    return count, time.thread_time() - started


def _usage(client, key: str) -> int:
    return int(client.memory_usage(key, samples=0) or 0)


def _once_keys(client) -> list[bytes]:
    return list(client.scan_iter(PREFIX + "once:*", count=5000))


# ---------------------------------------------------------------- 1. one Redis's ceiling


def _ceiling_run(folder: str, module: object, kind: str, children: int, workers: int, fsync: str) -> dict:
    """One job of `children` children of `kind` on a fresh deployment: redis-server CPU and what it stores."""
    with _shard(folder, module, workers, fsync) as shard:
        client = shard.client
        _warm(shard, kind)
        for key in _once_keys(client):  # the warm-up's, so that those counted below are this job's
            client.unlink(key)
        t0, idle0 = time.perf_counter(), _redis_cpu(client)
        time.sleep(1.0)  # idle: workers connected and waiting, nothing to do
        idle_s = time.perf_counter() - t0
        idle = {k: v - idle0[k] for k, v in _redis_cpu(client).items()}
        client.config_resetstat()
        xlen0, events0 = client.xlen(PREFIX + "events"), _usage(client, PREFIX + "events")
        logs0 = {k: _usage(client, k) for k in client.scan_iter(PREFIX + "logs:*")}
        cpu0, workers0, bench0 = _redis_cpu(client), shard.worker_cpu(), rb._cpu(os.getpid())
        ps0 = rb._cpu(shard.server.proc.pid)
        definition, params = _params(kind, children)
        wall, _ = _run([(shard, definition, params, children)])
        cpu = {k: v - cpu0[k] for k, v in _redis_cpu(client).items()}
        ps = rb._cpu(shard.server.proc.pid) - ps0
        worker_cpu, bench_cpu = shard.worker_cpu() - workers0, rb._cpu(os.getpid()) - bench0
        stats = client.info("commandstats")
        time.sleep(0.3)
        events = client.xlen(PREFIX + "events") - xlen0
        events_bytes = _usage(client, PREFIX + "events") - events0
        logs = {k: _usage(client, k) for k in client.scan_iter(PREFIX + "logs:*")}
        logs_bytes = sum(logs.values()) - sum(logs0.values())
        followed, follow_s = _follow_cost(client)
        once = _once_keys(client)
        before_unlink = int(client.info("memory")["used_memory"])
        for start in range(0, len(once), 5000):
            client.unlink(*once[start:start + 5000])
        time.sleep(0.2)
        once_bytes = before_unlink - int(client.info("memory")["used_memory"])
    lines = children * LINES if kind == "lines" else 0
    scripts = stats.get("cmdstat_evalsha", {})
    return {"kind": kind, "children": children, "lines": lines, "fsync": fsync, "workers": workers,
            "wall_s": wall, "children_per_s": children / wall, "lines_per_s": lines / wall,
            "redis_cpu_s": cpu, "redis_cpu_psutil_s": ps, "idle_redis_cpu_pct": {k: 100 * v / idle_s
                                                                                   for k, v in idle.items()},
            "redis_main_thread_pct": 100 * cpu["main_thread"] / wall,
            "workers_cpu_s": worker_cpu, "bench_cpu_s": bench_cpu,
            "redis_main_us_per_child": 1e6 * cpu["main_thread"] / children,
            "redis_process_us_per_child": 1e6 * cpu["process"] / children,
            "workers_us_per_child": 1e6 * worker_cpu / children,
            "scripts_per_child": scripts.get("calls", 0) / children,
            "script_us_per_call": scripts.get("usec_per_call", 0.0),
            "commands": {k[8:]: v["calls"] for k, v in sorted(stats.items(), key=lambda kv: -kv[1]["calls"])[:12]},
            "events_per_child": events / children, "event_bytes": events_bytes / max(events, 1),
            "log_stream_bytes_per_line": logs_bytes / lines if lines else None,
            "once_keys_per_child": len(once) / children, "once_key_bytes": once_bytes / max(len(once), 1),
            "tail_us_per_event": 1e6 * follow_s / max(followed, 1)}


def ceiling(children: int = 10_000, writers: int = 1_000, workers: int = 2, repeats: int = 3,
            fsync_always: bool = True, log: Callable[[str], None] = print) -> dict:
    """redis-server CPU per no-op child and per log line (children that log `LINES` lines each),
    with `workers` worker processes; `repeats` rounds, interleaved; medians. With `fsync_always`,
    the no-op job once more with `appendfsync always` in each round."""
    setups = [("noop", "noop", children, "everysec"), ("lines", "lines", writers, "everysec")]
    if fsync_always:
        setups.append(("noop_always", "noop", children, "always"))
    rounds: dict[str, list[dict]] = {key: [] for key, *_ in setups}
    with rb._app() as (folder, module):
        for round_ in range(1, repeats + 1):
            for key, kind, count, fsync in setups:
                r = _ceiling_run(folder, module, kind, count, workers, fsync)
                rounds[key].append(r)
                log(f"  {key} (round {round_}/{repeats}): {count:,} children in {r['wall_s']:.2f} s "
                    f"({r['children_per_s']:,.0f}/s); redis main thread {r['redis_main_us_per_child']:.0f} µs/child "
                    f"({r['redis_main_thread_pct']:.0f}% of a core), process {r['redis_process_us_per_child']:.0f} "
                    f"µs/child; workers {r['workers_us_per_child']:.0f} µs/child; "
                    f"{r['scripts_per_child']:.2f} scripts/child")
    runs = {}
    for key, measured in rounds.items():
        median = {f: statistics.median(m[f] for m in measured) for f in (
            "wall_s", "children_per_s", "lines_per_s", "redis_main_thread_pct", "redis_main_us_per_child",
            "redis_process_us_per_child", "workers_us_per_child", "scripts_per_child", "script_us_per_call",
            "events_per_child", "event_bytes", "once_keys_per_child", "once_key_bytes", "tail_us_per_event")}
        runs[key] = {**median, "rounds": measured}
    noop, lines = runs["noop"], runs["lines"]
    # A child that logs costs a child and its lines: what it costs beyond a no-op child, per line.
    per_line_main = (lines["redis_main_us_per_child"] - noop["redis_main_us_per_child"]) / LINES
    per_line_process = (lines["redis_process_us_per_child"] - noop["redis_process_us_per_child"]) / LINES
    return {"name": "scaling_ceiling", "workers": workers, "threads_per_process": rb.THREADS,
            "lines_per_child": LINES, "repeats": repeats, "runs": runs,
            "redis_main_us_per_noop_child": noop["redis_main_us_per_child"],
            "redis_main_us_per_line": per_line_main, "redis_process_us_per_line": per_line_process,
            "ceiling_children_per_s": 1e6 / noop["redis_main_us_per_child"],
            "ceiling_lines_per_s": 1e6 / per_line_main if per_line_main > 0 else None,
            "ceiling_logging_children_per_s": 1e6 / lines["redis_main_us_per_child"],
            "loadavg": os.getloadavg()}


# ---------------------------------------------------------------- 2. two shards


def shards(children: int = 20_000, jobs: int = 4, kind: str = "noop", loops: int = 0, repeats: int = 3,
           diagnostic: bool = True, log: Callable[[str], None] = print) -> dict:
    """`children` children of `kind` in `jobs` jobs, started together: on one redis-server with 2
    worker processes (`one`), and on two with 1 worker process each, half of the jobs on each
    (`two`). With `diagnostic`, also `one_half_jobs`: one redis-server, 2 worker processes, half as
    many jobs of twice the size (as many jobs per Redis as `two` has: what that alone changes).
    Rounds interleaved; medians."""
    per_job = children // jobs
    total = per_job * jobs
    # name: (worker processes of each shard, jobs): 2 worker processes in all either way
    setups = {"one": ([2], jobs), "two": ([1, 1], jobs)}
    if diagnostic:
        setups["one_half_jobs"] = ([2], jobs // 2)
    rounds: dict[str, list[dict]] = {key: [] for key in setups}
    with rb._app() as (folder, module):
        for round_ in range(1, repeats + 1):
            for key, (layout, count) in setups.items():
                with contextlib.ExitStack() as stack:
                    deployed = [stack.enter_context(_shard(folder, module, workers)) for workers in layout]
                    for shard in deployed:
                        _warm(shard, kind)
                    definition, params = _params(kind, total // count, loops)
                    plan = [(deployed[n % len(deployed)], definition, params, total // count) for n in range(count)]
                    for shard in deployed:
                        shard.client.config_resetstat()
                    cpu0 = [_redis_cpu(s.client) for s in deployed]
                    workers0 = [s.worker_cpu() for s in deployed]
                    bench0, busy0 = rb._cpu(os.getpid()), _machine_busy()
                    wall, ends = _run(plan)
                    busy1 = _machine_busy()
                    bench_cpu = rb._cpu(os.getpid()) - bench0
                    per_shard = []
                    for n, shard in enumerate(deployed):
                        mine = sum(c for s, _, _, c in plan if s is shard)
                        cpu = {k: v - cpu0[n][k] for k, v in _redis_cpu(shard.client).items()}
                        wcpu = shard.worker_cpu() - workers0[n]
                        stats = shard.client.info("commandstats")
                        scripts = stats.get("cmdstat_evalsha", {}).get("calls", 0)
                        refused = stats.get("cmdstat_del", {}).get("calls", 0)  # a refused commit DELs its once key
                        per_shard.append({"children": mine, "jobs": sum(1 for s, *_ in plan if s is shard),
                                          "worker_processes": layout[n], "wall_s": ends[id(shard)],
                                          "children_per_s": mine / ends[id(shard)], "redis_cpu_s": cpu,
                                          "redis_main_us_per_child": 1e6 * cpu["main_thread"] / mine,
                                          "redis_main_thread_pct": 100 * cpu["main_thread"] / ends[id(shard)],
                                          "workers_cpu_s": wcpu, "workers_us_per_child": 1e6 * wcpu / mine,
                                          "scripts_per_child": scripts / mine, "refused_commits": refused})
                busy, all_cpu = busy1[0] - busy0[0], busy1[1] - busy0[1]
                r = {"wall_s": wall, "children_per_s": total / wall, "shards": per_shard, "bench_cpu_s": bench_cpu,
                     "machine_busy_pct": 100 * busy / all_cpu if all_cpu else float("nan"),
                     "loadavg": os.getloadavg()}
                rounds[key].append(r)
                log(f"  {kind} {key}: {len(layout)} Redis, {count} jobs (round {round_}/{repeats}): "
                    f"{r['children_per_s']:,.0f} children/s ({wall:.2f} s), machine busy {r['machine_busy_pct']:.0f}%, "
                    "redis main thread " + ", ".join(f"{s['redis_main_us_per_child']:.0f} µs/child "
                                                     f"({s['redis_main_thread_pct']:.0f}%, "
                                                     f"{s['scripts_per_child']:.2f} scripts/child, "
                                                     f"{s['refused_commits']} refused)" for s in per_shard))

    def median(measured: list[dict], field: str, n: int) -> float:
        return statistics.median(m["shards"][n][field] for m in measured)

    runs = {}
    for key, measured in rounds.items():
        count = len(setups[key][0])
        runs[key] = {"redis_servers": count, "jobs": setups[key][1],
                     "children_per_s": statistics.median(m["children_per_s"] for m in measured),
                     "wall_s": statistics.median(m["wall_s"] for m in measured),
                     "machine_busy_pct": statistics.median(m["machine_busy_pct"] for m in measured),
                     **{f: [median(measured, f, n) for n in range(count)]
                        for f in ("redis_main_us_per_child", "redis_main_thread_pct", "scripts_per_child",
                                  "refused_commits")},
                     "workers_us_per_child": statistics.median(
                         sum(s["workers_cpu_s"] for s in m["shards"]) * 1e6 / total for m in measured),
                     "rounds": measured}
    return {"name": f"scaling_shards_{kind}", "kind": kind, "children": total, "jobs": jobs,
            "loops": loops, "repeats": repeats, "threads_per_process": rb.THREADS, "cpus": os.cpu_count(),
            "runs": runs, "two_vs_one": runs["two"]["children_per_s"] / runs["one"]["children_per_s"]}


# ---------------------------------------------------------------- all of it


def benchmarks(quick: bool = False) -> list[tuple[str, Callable[[], dict]]]:
    """(label, run) of each scaling benchmark, full or quick, for bench/run.py."""
    return [
        ("scaling: one Redis's CPU per child and per log line",
         lambda: ceiling(*((2_000, 300) if quick else (10_000, 1_000)), repeats=1 if quick else 3,
                         fsync_always=not quick)),
        ("scaling: two Redis shards vs one, no-op children",
         lambda: shards(2_000 if quick else 20_000, repeats=1 if quick else 3, diagnostic=not quick)),
    ]


def main() -> None:
    common.run_alone(__doc__, benchmarks)


if __name__ == "__main__":
    main()
