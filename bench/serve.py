"""The server process of the stream benchmarks: an orchestrator plus stepstream's or the naive app.

    python bench/serve.py --app stepstream|naive [--port N] [--db PATH]

Prints `READY <port>` once uvicorn listens, then reads commands from stdin, one per line:

- `run <transitions_per_s> <seconds>`: start a `load` job whose first step spawns no-op
  children at that steady rate (3 transitions each); the first child of every 10 ms tick
  writes a log line `probe <time.time()>` so clients can measure delay. Its second step logs
  `phase-done`. Answers `DONE <job_id> <transitions> <load seconds> <probes> <wall seconds>` once it settled.
- `quit`: stop.
"""

from __future__ import annotations

import argparse
import cProfile
import sys
import time

import common

from stepstream import Orchestrator, Step

TICK = 0.01  # pacing and probe interval, seconds


def _child(ctx, probe: bool) -> None:  # pragma: no cover - runs in the server process
    if probe:
        ctx.log("info", f"probe {time.time():.6f}")


def _load(ctx) -> None:  # pragma: no cover - runs in the server process
    """Spawn children at a steady rate for a bounded time and count."""
    per_s = ctx.params["rate"] / 3
    seconds = ctx.params["seconds"]
    limit = int(per_s * seconds) + 1
    spawned = 0
    start = time.perf_counter()
    next_probe = start
    while spawned < limit:
        now = time.perf_counter()
        if now - start > seconds + 5:  # the orchestrator cannot keep up: stop anyway
            break
        due = min(limit, int((now - start) * per_s) + 1)
        while spawned < due:
            probe = now >= next_probe
            if probe:
                next_probe += TICK
            ctx.spawn(_child, probe)
            spawned += 1
        time.sleep(max(0.0, start + spawned / per_s - time.perf_counter()))
    ctx.log("info", f"spawned {spawned} in {time.perf_counter() - start:.3f}")


def _done(ctx) -> None:  # pragma: no cover - runs in the server process
    ctx.log("info", "phase-done")


def build(app_name: str, db: str | None = None) -> tuple[Orchestrator, object]:
    """The orchestrator (with `db`: journaled to that SQLite file) and the app serving it."""
    orch = Orchestrator(max_workers=4, capture_level=None, db=db)
    orch.define("load", [Step("load", _load), Step("done", _done)])
    if app_name == "naive":
        from naive import create_naive_app

        return orch, create_naive_app(orch)
    from stepstream.server import create_app

    return orch, create_app(orch)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--app", choices=("stepstream", "naive"), default="stepstream")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--db", help="keep the history in this SQLite file (default: memory only)")
    parser.add_argument("--profile", help="write a cProfile of the event-loop thread to this path")
    args = parser.parse_args()
    common.raise_open_files()

    orch, app = build(args.app, args.db)
    profiler = cProfile.Profile() if args.profile else None
    common.start_server(app, args.port, runner=profiler.runcall if profiler else None, backlog=4096)

    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        if words[0] == "run":
            rate, seconds = float(words[1]), float(words[2])
            started = time.perf_counter()
            job = orch.start("load", {"rate": rate, "seconds": seconds})
            snap = orch.wait(job, timeout=seconds + 120)
            wall = time.perf_counter() - started
            steps = snap["job"]["steps"]
            children = steps[0]["progress"]["total"]
            records = orch.logs(job, step="load", limit=5000)["logs"]
            probes = sum(1 for r in records if r["message"].startswith("probe "))
            spawn_s = next((float(r["message"].split()[-1]) for r in records
                            if r["message"].startswith("spawned ")), wall)
            print(f"DONE {job} {3 * children} {spawn_s:.4f} {probes} {wall:.4f}", flush=True)
    if profiler is not None:
        profiler.create_stats()
        profiler.dump_stats(args.profile)
    common.exit_server(orch)


if __name__ == "__main__":
    main()
