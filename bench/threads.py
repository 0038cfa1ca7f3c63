"""Worker threads: the same 3-step job of no-op children on 1, 2, 4 and 8 threads, in memory and
on a SQLite journal, with the CPU of each kind of thread (from `/proc/self/task`, Linux).

A job whose children do nothing measures what the orchestrator itself costs per child; more
threads can only add to it (the GIL), so the figure to watch is how little they add: threads
that queue behind each other on a lock show as CPU far above the 1-thread run's.

Run alone: `python bench/threads.py [--quick]` (prints JSON).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time

import common

from stepstream import Orchestrator, Step
from stepstream.hub import Hub


def _cpu_of(native_id: int) -> float:
    fields = open(f"/proc/self/task/{native_id}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _kind(thread: threading.Thread) -> str:
    return "workers" if thread.name.startswith("stepstream-worker") else thread.name


def run(children: int, threads: int, db: str | None = None) -> dict:
    """One 3-step job of `children` no-op children on `threads` worker threads, until durable."""
    orch = Orchestrator(max_workers=threads, capture_level=None, db=db)
    Hub(orch.store)
    per_step = children // 3

    def fan_out(ctx):
        for _ in range(per_step):
            ctx.spawn(common.noop)

    orch.define("threads", [Step(f"s{i}", fan_out) for i in range(3)])
    before = {t.native_id: _cpu_of(t.native_id) for t in threading.enumerate()}
    wall0, cpu0 = time.perf_counter(), time.process_time()
    orch.wait(orch.start("threads"), timeout=600)
    if not orch.store.wait_visible(orch.seq, timeout=600):
        raise TimeoutError("not durable within 600 s")
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    by_kind: dict[str, float] = {}
    for thread in threading.enumerate():
        if thread.native_id is not None:
            by_kind[_kind(thread)] = (by_kind.get(_kind(thread), 0.0) + _cpu_of(thread.native_id)
                                      - before.get(thread.native_id, 0.0))
    orch.shutdown()
    return {"threads": threads, "db": db is not None, "children": per_step * 3, "wall_s": wall, "cpu_s": cpu,
            "transitions_per_s": per_step * 3 * 3 / wall, "cpu_by_thread_s": by_kind}


def main() -> None:
    args = common.arguments(__doc__).parse_args()
    children = 15_000 if args.quick else 60_000
    with tempfile.TemporaryDirectory() as folder:
        for n, threads in enumerate((1, 2, 4, 8)):
            print(json.dumps(run(children, threads)), flush=True)
            print(json.dumps(run(children, threads, os.path.join(folder, f"j{n}.db"))), flush=True)


if __name__ == "__main__":
    main()
