"""Memory: RSS per 100,000 retained (finished) children, in a fresh process.

The replay ring is filled first by a warm-up job, so the figure is what the children themselves
keep (what the store holds of them and their log lines), not the ring. Baseline: the same
children kept as one JSON-shaped dict each (`wire.child_json`), as the replaced system stored
them.

Each figure is measured in a fresh process of its own: the store keeps a settled manager's
children compactly and lets go of their `Job` objects, and dicts made in the same process would
fill the memory that freed, which would make the baseline look smaller than it is. The baseline's
dicts are made from the children once they have all finished, before their manager settles.

Run alone: `python bench/memory.py [--children N]` (prints JSON); `bench/run.py` runs it in a
subprocess so that other benchmarks' garbage does not blur the figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys

import common
import psutil

from stepstream import wire
from stepstream.backends.memory import MemoryStore
from stepstream.jobs import Job


def _rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def _run_job(store: MemoryStore, children: int) -> tuple[Job, Job]:
    """A manager with one step whose `children` children all finished; its handler has not
    returned yet (the manager has not settled)."""
    manager, [step] = store.create_manager("mem", ["a"], {})
    common.run_children(store, step, children)
    return manager, step


def _finished_job(store: MemoryStore, children: int) -> None:
    _, step = _run_job(store, children)
    store.handler_returned(step, None)


def measure(children: int, part: str) -> int:
    """RSS growth in bytes: `ours` for a finished job of `children` children kept by the store,
    `baseline` for the same children made into JSON dicts."""
    store = MemoryStore()
    _finished_job(store, store.replay_size)  # fills the ring: its size is steady from now on
    if part == "ours":
        before = _rss()
        _finished_job(store, children)
        return _rss() - before
    manager, _ = _run_job(store, children)
    before = _rss()
    kept = [wire.child_json(c) for c in manager.children]
    grown = _rss() - before
    del kept
    return grown


def _measured(children: int, part: str) -> int:
    out = subprocess.run([sys.executable, __file__, "--children", str(children), "--part", part],
                         capture_output=True, text=True, check=True, timeout=300)
    return int(out.stdout)


def retained_children(children: int = 100_000) -> dict:
    """Runs `measure` in fresh interpreters."""
    ours, baseline = _measured(children, "ours"), _measured(children, "baseline")
    per = 100_000 / children
    return {"name": "memory_children", "children": children,
            "mb_per_100k_children": ours * per / 2**20,
            "baseline_mb_per_100k_children": baseline * per / 2**20,
            "ratio": ours / max(baseline, 1)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--children", type=int, default=100_000)
    parser.add_argument("--part", choices=["ours", "baseline"], help="measure one figure in this process")
    args = parser.parse_args()
    if args.part is not None:
        print(measure(args.children, args.part))
    else:
        print(json.dumps({"children": args.children, "rss_bytes": _measured(args.children, "ours"),
                          "baseline_rss_bytes": _measured(args.children, "baseline")}))
