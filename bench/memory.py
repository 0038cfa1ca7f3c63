"""Memory: RSS per 100,000 retained (finished) children, in a fresh process.

The replay ring is filled first by a warm-up job, so the figure is what the children themselves
keep (their `Job` objects and log lines), not the ring. Baseline: the same children kept as one
JSON-shaped dict each, as the replaced system stored them.

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


def _rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def _finished_job(store: MemoryStore, children: int) -> None:
    manager, [step] = store.create_manager("mem", ["a"], {})
    common.run_children(store, step, children)
    store.handler_returned(step, None)


def measure(children: int) -> dict:
    store = MemoryStore()
    _finished_job(store, store.replay_size)  # fills the ring: its size is steady from now on
    before = _rss()
    _finished_job(store, children)
    ours = _rss() - before
    kept = [wire.child_json(c) for c in list(store._managers.values())[-1].children]
    baseline = _rss() - before - ours
    del kept
    return {"children": children, "rss_bytes": ours, "baseline_rss_bytes": baseline}


def retained_children(children: int = 100_000) -> dict:
    """Runs `measure` in a fresh interpreter."""
    out = subprocess.run([sys.executable, __file__, "--children", str(children)],
                         capture_output=True, text=True, check=True, timeout=300)
    figures = json.loads(out.stdout)
    per = 100_000 / children
    return {"name": "memory_children", "children": children,
            "mb_per_100k_children": figures["rss_bytes"] * per / 2**20,
            "baseline_mb_per_100k_children": figures["baseline_rss_bytes"] * per / 2**20,
            "ratio": figures["rss_bytes"] / max(figures["baseline_rss_bytes"], 1)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--children", type=int, default=100_000)
    print(json.dumps(measure(parser.parse_args().children)))
