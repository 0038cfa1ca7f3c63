"""Core benchmarks: progress cost per child transition vs job size, core throughput, and what
the garbage collector's settings do to it (CPython's defaults against `tune_gc()`, what the
command line runs with).

Run alone: `python bench/core.py [--quick]`; `bench/run.py` runs these with the others.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections import Counter

import common

from stepstream import Orchestrator, Step
from stepstream.backends.memory import MemoryStore
from stepstream.hub import Hub


def _timed_transitions(store: MemoryStore, children: list, window: int) -> float:
    """Seconds for `window` children to go pending -> running -> completed (2 transitions each)."""
    start = time.perf_counter()
    for child in children[:window]:
        store.begin_child(child)
        store.end_child(child, None)
    return time.perf_counter() - start


def progress_cost(sizes=(1_000, 10_000, 100_000), window: int = 1_000, repeat: int = 3) -> dict:
    """µs per child transition in a step holding `size` children, stepstream vs scanning.

    The baseline does what the replaced system did: after each transition it recomputes the
    step's counts by scanning the step's children.
    """
    rows = []
    for size in sizes:
        best, best_scan = float("inf"), float("inf")
        for _ in range(repeat):
            store = MemoryStore(replay_size=1 << 16)
            manager, [step] = store.create_manager("bench", ["a"], {})
            children = common.add_children(store, step, size)
            best = min(best, _timed_transitions(store, children, window))

            statuses = {i: "pending" for i in range(size)}  # the baseline's own child table
            start = time.perf_counter()
            for i in range(min(window, 200)):  # scanning is slow: fewer transitions, same unit
                for new in ("running", "completed"):
                    statuses[i] = new
                    Counter(statuses.values())  # recount the step
            best_scan = min(best_scan, (time.perf_counter() - start) / (2 * min(window, 200)))
        rows.append({"children": size, "us_per_transition": best / (2 * window) * 1e6,
                     "baseline_us_per_transition": best_scan * 1e6})
    return {"name": "progress_cost", "rows": rows,
            **common.growth(rows, "us_per_transition", "baseline_us_per_transition")}


def job_wall_time(children: int = 10_000, steps: int = 3, workers: int = 8, hub: bool = True,
                  db: str | None = None) -> dict:
    """Wall time of a job of `steps` steps with `children` no-op children in all, through the
    orchestrator's thread pool, until its final state is visible (with `db`, a SQLite journal:
    durable); with `hub`, a `Hub` is made but has no clients (it listens only while it has some)."""
    orch = Orchestrator(max_workers=workers, capture_level=None, db=db)
    if hub:
        Hub(orch.store)
    per_step = children // steps

    def fan_out(ctx):
        for _ in range(per_step):
            ctx.spawn(common.noop)

    orch.define("bench", [Step(f"s{i}", fan_out) for i in range(steps)])
    start = time.perf_counter()
    job = orch.start("bench")
    final = orch.wait(job, timeout=600)
    settled = time.perf_counter() - start
    if not orch.store.wait_visible(orch.seq, timeout=600):  # without a journal: at once
        raise TimeoutError("the job's final state did not become durable within 600 s")
    wall = time.perf_counter() - start
    orch.shutdown()
    assert final["job"]["progress"]["completed"] == per_step * steps
    transitions = per_step * steps * 3  # created, running, completed
    return {"name": "job_wall_time", "hub": hub, "db": db, "children": per_step * steps, "steps": steps, "wall_s": wall,
            "settled_s": settled, "children_per_s": per_step * steps / wall, "transitions_per_s": transitions / wall,
            "events": orch.store.seq}


def store_throughput(children: int = 100_000) -> dict:
    """Child transitions per second through the store alone (no thread pool in the way)."""
    store = MemoryStore()
    manager, [step] = store.create_manager("bench", ["a"], {})
    start = time.perf_counter()
    common.run_children(store, step, children)
    wall = time.perf_counter() - start
    return {"name": "store_throughput", "children": children, "wall_s": wall,
            "transitions_per_s": 3 * children / wall}


def core_throughput(children: int = 100_000) -> dict:
    """Child transitions/s through the orchestrator with the hub attached and no clients, and the
    wall time of that 3-step job; baseline: the same job with no hub attached."""
    ours = job_wall_time(children, hub=True)
    bare = job_wall_time(children, hub=False)
    store = store_throughput(children)
    return {"name": "core_throughput", "children": ours["children"], "steps": ours["steps"],
            "wall_s": ours["wall_s"], "transitions_per_s": ours["transitions_per_s"],
            "baseline_wall_s": bare["wall_s"], "baseline_transitions_per_s": bare["transitions_per_s"],
            "ratio": ours["transitions_per_s"] / bare["transitions_per_s"],
            "store_only_transitions_per_s": store["transitions_per_s"]}


_IN_A_FRESH_PROCESS = """
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/bench"]
if sys.argv[3] == "tuned":
    from stepstream import tune_gc
    tune_gc()
import core
n = int(sys.argv[4])
print(json.dumps(core.job_wall_time(n) if sys.argv[2] == "job" else core.store_throughput(n)))
"""


def collector(children: int = 100_000, rounds: int = 3) -> dict:
    """core_throughput's job (8 threads, idle hub) and the store alone, each in a fresh process,
    with CPython's collector settings and with `tune_gc()`; rounds interleaved, medians."""
    runs: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for settings in ("default", "tuned"):
            for what in ("job", "store"):
                out = subprocess.run([sys.executable, "-c", _IN_A_FRESH_PROCESS, common.ROOT, what, settings,
                                      str(children)], capture_output=True, text=True, check=True, timeout=900)
                runs.setdefault((what, settings), []).append(json.loads(out.stdout)["transitions_per_s"])
    median = {f"{what}_{settings}": statistics.median(values) for (what, settings), values in runs.items()}
    return {"name": "core_collector", "children": children, "rounds": rounds, **median,
            "runs": {f"{what}_{settings}": values for (what, settings), values in runs.items()},
            "job_vs_store_default": median["job_default"] / median["store_default"],
            "job_vs_store_tuned": median["job_tuned"] / median["store_tuned"],
            "tuned_vs_default_job": median["job_tuned"] / median["job_default"]}


def main() -> None:
    args = common.arguments(__doc__).parse_args()
    results = [
        progress_cost(sizes=(1_000, 100_000), repeat=1 if args.quick else 3),
        core_throughput(20_000 if args.quick else 100_000),
        collector(20_000 if args.quick else 100_000, 1 if args.quick else 3),
    ]
    for result in results:
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
