"""Two checkouts of stepstream side by side, interleaved, in CPU time (less sensitive than wall
time to a shared machine): the memory store alone, and the orchestrator running a 3-step job of
no-op children in memory and on a SQLite journal.

    git worktree add --detach /tmp/before <commit>
    python bench/compare.py /tmp/before . [--rounds 6]

Each figure is transitions per CPU-second of the process (`time.process_time`), best of 3 inside
a run; the rounds alternate the two trees so that drift hits both alike.

    python bench/compare.py /tmp/before . --callgrind

counts instructions instead (valgrind's callgrind, the same count on every run): the store alone,
3,000 children added, begun and ended, less the same process with none, per transition.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

CHILD = r'''
import os, sys, tempfile, time
sys.path.insert(0, sys.argv[1])
what = sys.argv[2]
try:
    from stepstream.backends.memory import MemoryStore as Store  # after the engine
    def first_step(store): return store.create_manager("b", ["a"], {})[1][0]
    def add(store, step): return store.add_child(noop, (), {}, 0, step_id=step.id)[0]
except ImportError:
    from stepstream.store import Store  # before
    def first_step(store): return store.create_manager("b", ["a"], {})[1]
    def add(store, step): return store.add_child(noop, (), {}, 0, step_id=step.id)
from stepstream import Orchestrator, Step

def noop(ctx): pass

def fan(ctx):
    for _ in range(ctx.params["n"]):
        ctx.spawn(noop)

if what == "count":  # once, untimed: for callgrind, which counts the instructions
    store = Store(replay_size=1 << 16)
    step = first_step(store)
    for _ in range(int(sys.argv[3])):
        child = add(store, step)
        store.begin_child(child)
        store.end_child(child, None)
    sys.exit(0)
best = 0.0
for _ in range(3):
    if what == "store":
        store = Store(replay_size=1 << 16)
        step = first_step(store)
        started = time.process_time()
        for _ in range(20_000):
            child = add(store, step)
            store.begin_child(child)
            store.end_child(child, None)
        best = max(best, 60_000 / (time.process_time() - started))
    else:
        folder = tempfile.mkdtemp()
        orch = Orchestrator(max_workers=2, **({"db": os.path.join(folder, "j.db")} if what == "journal" else {}))
        orch.define("f", [Step("a", fan), Step("b", fan), Step("c", fan)])
        started = time.process_time()
        orch.wait(orch.start("f", {"n": 5_000}), 300)
        orch.store.wait_visible(orch.seq, 60)
        best = max(best, 45_000 / (time.process_time() - started))
        orch.shutdown()
print(best)
'''


def instructions(tree: str, children: int) -> int:
    """Instructions the store loop takes with `children` children (callgrind counts them)."""
    python = os.path.realpath(sys.executable)  # the interpreter itself, not a shim that execs it
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", python,
                          "-c", CHILD, os.path.abspath(tree), "count", str(children)], capture_output=True, text=True,
                         check=True, timeout=1200)
    return int(out.stderr.rsplit("Collected : ", 1)[1].split()[0])


def one(tree: str, what: str) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, os.path.abspath(tree), what], capture_output=True, text=True,
                         check=True, timeout=600)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="a checkout (the baseline)")
    parser.add_argument("b", help="another checkout")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--callgrind", action="store_true", help="count instructions (needs valgrind)")
    args = parser.parse_args()
    if args.callgrind:
        per = {tree: (instructions(tree, 3_000) - instructions(tree, 0)) / 9_000 for tree in (args.a, args.b)}
        print(f"store alone, instructions per transition: {args.a}: {per[args.a]:,.0f}   {args.b}: {per[args.b]:,.0f}"
              f"   ratio {per[args.b] / per[args.a]:.3f}×")
        return
    for what in ("store", "memory", "journal"):
        figures: dict[str, list[float]] = {args.a: [], args.b: []}
        for _ in range(args.rounds):
            for tree in (args.a, args.b):
                figures[tree].append(one(tree, what))
        a, b = statistics.median(figures[args.a]), statistics.median(figures[args.b])
        print(f"{what:8s} {args.a}: median {a:,.0f}/s ({min(figures[args.a]):,.0f}–{max(figures[args.a]):,.0f})   "
              f"{args.b}: median {b:,.0f}/s ({min(figures[args.b]):,.0f}–{max(figures[args.b]):,.0f})   "
              f"ratio {b / a:.2f}×", flush=True)
    print(f"load average {os.getloadavg()[1]:.1f} (5 min)")


if __name__ == "__main__":
    main()
