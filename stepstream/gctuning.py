"""The garbage collector's settings for a process that runs stepstream's work.

A process that runs many children keeps many objects alive (the replay ring's events, the live
jobs), and CPython's cyclic collector walks them over and over: with its default settings it took
about 45% of the CPU of a 3-step job of no-op children in memory (docs/benchmarks.md, "The
garbage collector"). stepstream's own objects form no reference cycles on the hot path, so they are
freed by reference counting alone; the collector only needs to run less often.

`tune()` is what the command line (`serve`, `worker`, `run`) does at start. The library never
changes a process's collector by itself: an application that embeds the orchestrator may call
`tune()` too (`from stepstream import tune_gc`).
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000  # allocations between two collections of the youngest generation (CPython's default: 700)


def tune() -> None:
    """Collect the youngest generation every `YOUNG_THRESHOLD` allocations instead of 700, and
    leave what is alive now (modules, classes, the process's set-up) out of every later collection."""
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, oldest)
