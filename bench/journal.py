"""The journal's cost: `Orchestrator(db=...)` (the SQLite journal) side by side with memory only.

- throughput: core.py's 3-step job of N no-op children, until its final state is durable;
- stream delay: fanout.py's probes at a moderate rate and a few clients, the server process
  (bench/serve.py) with and without `--db`;
- disk: bytes per child and per log line (database + WAL growth after a checkpoint), from a
  real run of the orchestrator;
- start-up: `stepstream serve --db` on a database of 1,000,000 children and 1,000,000 log lines
  (1,000 finished managers of 1,000 children, one line each, plus one unsettled manager that the
  start-up must settle), written with the journal's own `write` and dropped from the page cache;
  process start to the first answers. Baseline: `stepstream serve --memory` (an empty server:
  imports and listening);
- restart: the same with a few thousand finished jobs of a real run.

`--quick` makes everything smaller, the start-up database 100,000 children + 100,000 lines.
Run alone: `python bench/journal.py [--quick]`; `bench/run.py` runs it with the others.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import common
import core
import fanout
import psutil

from harness.processes import Served, base_of
from stepstream import Orchestrator, Step, wire
from stepstream.backends.memory import MemoryStore
from stepstream.events import Event
from stepstream.journal import Batch
from stepstream.journal.sqlite import SqliteJournal
from stepstream.model import COUNTED, SLOT, progress_dict

TARGET_RATIO = 0.70  # journaled throughput, share of in-memory
TARGET_ADDED_P50_MS = 20.0
TARGET_STARTUP_S = 3.0


@contextmanager
def _folder() -> Iterator[str]:
    """A temporary folder, removed afterwards (under /tmp: on this machine a disk, not a tmpfs)."""
    path = tempfile.mkdtemp(prefix="stepstream-bench-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _checkpointed_size(path: str) -> int:
    """Bytes of the database and its WAL once the WAL is folded into the database and emptied."""
    conn = sqlite3.connect(path)
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.close()
    if busy:
        raise RuntimeError(f"{path}: the checkpoint was blocked")
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def _uncached(path: str) -> str:
    """`path`, written to disk and dropped from the OS page cache (this machine's; a virtual
    disk may still be cached by its host), so that a start-up reads it from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return path


def _table_bytes(path: str) -> dict[str, int]:
    """Bytes of each table and index (SQLite's `dbstat`)."""
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall())
    finally:
        conn.close()


# ---------------------------------------------------------------- 1. throughput


def throughput(children: int = 100_000) -> dict:
    """core.py's job (3 steps, `children` no-op children, idle hub) in memory and journaled,
    each timed until its final state is visible: with the journal, durable."""
    memory = core.job_wall_time(children)
    with _folder() as folder:
        path = os.path.join(folder, "throughput.db")
        journaled = core.job_wall_time(children, db=path)
        size = _checkpointed_size(path)
    return {"name": "journal_throughput", "children": journaled["children"], "steps": journaled["steps"],
            "wall_s": journaled["wall_s"], "settled_s": journaled["settled_s"],
            "transitions_per_s": journaled["transitions_per_s"],
            "events": journaled["events"], "db_bytes": size,
            "baseline_wall_s": memory["wall_s"], "baseline_transitions_per_s": memory["transitions_per_s"],
            "ratio": journaled["transitions_per_s"] / memory["transitions_per_s"], "target_ratio": TARGET_RATIO}


# ---------------------------------------------------------------- 2. stream delay


def stream_delay(clients: int = 5, rate: float = 1000, seconds: float = 10, repeat: int = 1, log=print) -> dict:
    """fanout.py's delay (change → client) at one moderate rate, the server in memory, then
    journaling to a fresh SQLite file; `repeat` times in turn, each figure the median over them."""
    common.raise_open_files()
    points: dict[str, list[dict]] = {"memory": [], "journal": []}
    with _folder() as folder:
        for n in range(repeat):
            for storage, args in (("memory", ()), ("journal", ("--db", os.path.join(folder, f"stream{n}.db")))):
                run = asyncio.run(fanout.measure("stepstream", clients, [rate], seconds, log, server_args=args))
                points[storage] += run["points"]
    median = {storage: {key: statistics.median(p[key] for p in runs) for key in runs[0]
                        if isinstance(runs[0][key], float | int) and not isinstance(runs[0][key], bool)}
              for storage, runs in points.items()}
    return {"name": "journal_stream_delay", "clients": clients, "rate": rate, "seconds_per_point": seconds,
            "repeat": repeat,
            "journal": median["journal"], "memory": median["memory"], "points": points,
            "added_p50_ms": median["journal"]["p50_ms"] - median["memory"]["p50_ms"],
            "added_p99_ms": median["journal"]["p99_ms"] - median["memory"]["p99_ms"],
            "target_added_p50_ms": TARGET_ADDED_P50_MS}


# ---------------------------------------------------------------- 4. disk


def _fan_out(count: int) -> Callable:
    def handler(ctx) -> None:
        for _ in range(count):
            ctx.spawn(common.noop)
    return handler


def _write_lines(count: int) -> Callable:
    def handler(ctx) -> None:
        for n in range(count):
            ctx.log("info", f"fetched page {n}: 200 OK, 5,120 bytes in 0.042 s")
    return handler


def disk(children: int = 50_000, lines: int = 100_000) -> dict:
    """Bytes on disk per child (no log lines) and per log line (written by a step handler),
    from real jobs of an `Orchestrator(db=...)`: growth of database + WAL after a checkpoint,
    divided by the count. Everything a child costs is counted: its row and its events."""
    with _folder() as folder:
        path = os.path.join(folder, "disk.db")
        orch = Orchestrator(max_workers=8, capture_level=None, db=path)
        orch.define("warm", [Step("a", _fan_out(10))])
        orch.define("children", [Step("a", _fan_out(children))])
        orch.define("lines", [Step("a", _write_lines(lines))])
        sizes, tables = [], []
        try:
            for definition in ("warm", "children", "lines"):  # warm: the schema and first pages exist
                orch.wait(orch.start(definition), timeout=600)
                orch.store.wait_visible(orch.seq, timeout=600)
                sizes.append(_checkpointed_size(path))
                tables.append(_table_bytes(path))
        finally:
            orch.shutdown()
    events_child = sum(v for k, v in tables[1].items() if k.startswith("events")) - \
        sum(v for k, v in tables[0].items() if k.startswith("events"))
    return {"name": "journal_disk", "children": children, "lines": lines,
            "bytes_per_child": (sizes[1] - sizes[0]) / children,
            "bytes_per_child_events": events_child / children,
            "bytes_per_line": (sizes[2] - sizes[1]) / lines, "db_bytes": sizes[-1],
            "table_bytes": tables[-1]}


# ---------------------------------------------------------------- 3. and 5. start-up


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as answer:
        return json.loads(answer.read())


def first_answers(storage: tuple[str, ...], paths: list[str],
                  check: Callable[[list[dict]], None] | None = None) -> dict:
    """`python -m stepstream serve <storage> --port 0` in a fresh process: seconds from its start
    to `serving on`, then to each of `paths` answered in turn; its RSS after. `check` looks at
    the answers (so a benchmark never times error pages)."""
    with _folder() as scratch:
        started = time.perf_counter()
        with Served(*storage, "--port", "0", cwd=scratch) as served:
            base = base_of(served.url())
            listening = time.perf_counter() - started
            answers, at = [], []
            for path in paths:
                answers.append(_get(base + path))
                at.append(time.perf_counter() - started)
            rss = psutil.Process(served.proc.pid).memory_info().rss
            served.interrupt()
    if check is not None:
        check(answers)
    return {"listening_s": listening, "answered_s": at, "rss_mb": rss / 2**20}


def _templates() -> dict:
    """The JSON of a manager (running, then finished), a child (running, then completed) and a
    child's log event, as a real store makes them."""
    store = MemoryStore()
    manager, [fetch] = store.create_manager("crawl", ["fetch", "report"], {"pages": 1000})
    child = store.add_child(common.noop, (), {}, 0, step_id=fetch.id)[0]
    store.begin_child(child)
    running = {"manager": wire.manager_json(manager), "child": wire.child_json(child)}
    store.log(child.id, "info", "fetched page 0: 200 OK, 5,120 bytes in 0.042 s")
    store.end_child(child, None)
    [report] = store.handler_returned(fetch, None)
    store.handler_returned(report, None)
    events, _ = store.events_after(0)
    log = next(e.data for e in events if e.type == "log" and e.data["job_id"] == child.id)
    return {"running": running, "manager": wire.manager_json(manager), "child": wire.child_json(child), "log": log}


def build_history(path: str, managers: int = 1_000, children: int = 1_000) -> dict:
    """A journal of `managers` finished managers of `children` children with one log line each,
    and one more manager, unsettled, as a process stopped mid-run leaves it; written with
    `SqliteJournal.write` a few managers per batch. Returns the ids to ask for."""
    t = _templates()
    journal = SqliteJournal(path)
    journal.load("benchhistory", 1)  # the store id, as a first start writes it
    seq = 0

    def manager_rows(ordinal: int, unsettled: bool) -> tuple[tuple, list[tuple], list[Event]]:
        nonlocal seq
        mid = f"m_{ordinal:06x}000000"  # the length of real ids
        steps = [f"s_{ordinal:06x}{i:06x}" for i in range(2)]
        kids, events = [], []
        counts = [0] * len(COUNTED)
        for position in range(children):
            status = "completed" if not unsettled or position < children // 2 else \
                "running" if position < children // 2 + 8 else "pending"
            counts[SLOT[status]] += 1
            cid = f"c_{ordinal:06x}{position:06x}"
            template = t["child"] if status == "completed" else t["running"]["child"]
            child = {**template, "id": cid, "status": status, "manager_id": mid, "step_id": steps[0],
                     "parent_id": steps[0]}
            if status == "pending":
                child["started_at"] = None
            kids.append((cid, mid, steps[0], position, status, child))
            if status == "completed":
                seq += 1
                events.append(Event(seq, "log", mid, None, {
                    **t["log"], "seq": seq, "message": f"fetched page {position}: 200 OK, 5,120 bytes in 0.042 s",
                    "job_id": cid, "step_id": steps[0], "manager_id": mid,
                    "log_count": position + 1, "manager_log_count": position + 1}))
        template = t["running"]["manager"] if unsettled else t["manager"]
        progress = progress_dict(children, counts)
        job = {**template, "id": mid, "progress": progress, "log_count": len(events),
               "steps": [{**step, "id": sid, "progress": progress if i == 0 else step["progress"],
                          "log_count": len(events) if i == 0 else step["log_count"]}
                         for i, (step, sid) in enumerate(zip(template["steps"], steps, strict=True))]}
        row = (mid, ordinal, job["definition"], job["status"], not unsettled, None if unsettled else seq, job, steps)
        return row, kids, events

    per_batch = max(1, 100_000 // children)
    for first in range(1, managers + 2, per_batch):
        rows, kids, events = [], [], []
        for ordinal in range(first, min(first + per_batch, managers + 2)):
            row, more_kids, more_events = manager_rows(ordinal, unsettled=ordinal == managers + 1)
            rows.append(row)
            kids += more_kids
            events += more_events
        journal.write(Batch(events=events, managers=rows, children=kids))
    journal.close()
    return {"old": f"m_{1:06x}000000", "unsettled": f"m_{managers + 1:06x}000000",
            "children": (managers + 1) * children, "lines": seq}


def startup(managers: int = 1_000, children: int = 1_000, repeat: int = 2) -> dict:
    """Process start → first answers of `stepstream serve --db` on a big journal (a fresh copy of
    it each time, so that every start settles the unsettled manager, out of the page cache);
    baseline `--memory`."""
    with _folder() as folder:
        built = os.path.join(folder, "built.db")
        t0 = time.perf_counter()
        ids = build_history(built, managers, children)
        build_s = time.perf_counter() - t0
        size = _checkpointed_size(built)
        old = ids["old"]
        paths = ["/api/jobs", f"/api/jobs/{old}", f"/api/jobs/{old}/children", f"/api/jobs/{old}/logs",
                 f"/api/jobs/{ids['unsettled']}"]

        def check(answers: list[dict]) -> None:
            listing, job, kids, logs, unsettled = answers
            assert listing["jobs"][0]["id"] == ids["unsettled"], listing["jobs"][0]["id"]
            assert job["job"]["progress"]["completed"] == children, job["job"]["progress"]
            assert kids["children"] and logs["logs"], (len(kids["children"]), len(logs["logs"]))
            assert unsettled["job"]["status"] == "failed", unsettled["job"]["status"]  # settled at start

        runs = []
        for _ in range(repeat):
            db = os.path.join(folder, "history.db")
            shutil.copyfile(built, db)
            runs.append(first_answers(("--db", _uncached(db)), paths, check))
            os.remove(db)
        baseline = [first_answers(("--memory",), ["/api/jobs"]) for _ in range(repeat)]
    return {"name": "journal_startup", "managers": managers + 1, "children": ids["children"], "lines": ids["lines"],
            "db_bytes": size, "build_s": build_s, "paths": paths, "runs": runs,
            **_median_answers(runs, baseline), "target_s": TARGET_STARTUP_S}


def _median_answers(runs: list[dict], baseline: list[dict]) -> dict:
    """The median over repeated starts: to listening, to each answer; the baseline's first answer."""
    return {"listening_s": statistics.median(r["listening_s"] for r in runs),
            "answered_s": [statistics.median(at) for at in zip(*(r["answered_s"] for r in runs), strict=True)],
            "rss_mb": statistics.median(r["rss_mb"] for r in runs),
            "baseline_answered_s": statistics.median(b["answered_s"][0] for b in baseline),
            "baseline_runs": baseline}


def _small(ctx) -> None:
    for n in range(5):
        ctx.spawn(_leaf, n)


def _leaf(ctx, n: int) -> None:
    ctx.log("info", f"leaf {n} done")


def _report(ctx) -> None:
    ctx.log("info", "report written")


def restart(jobs: int = 3_000, repeat: int = 3) -> dict:
    """Process start → first answers of `stepstream serve --db` on the journal of a real run of
    `jobs` finished jobs (2 steps, 5 children, 6 log lines each), out of the page cache;
    baseline `--memory`."""
    with _folder() as folder:
        db = os.path.join(folder, "restart.db")
        orch = Orchestrator(max_workers=8, capture_level=None, db=db)
        orch.define("small", [Step("fetch", _small), Step("report", _report)])
        t0 = time.perf_counter()
        started = [orch.start("small") for _ in range(jobs)]
        for job in started:
            orch.wait(job, timeout=600)
        orch.shutdown()
        run_s = time.perf_counter() - t0
        size = _checkpointed_size(db)
        paths = ["/api/jobs", f"/api/jobs/{started[0]}"]

        def check(answers: list[dict]) -> None:
            assert answers[0]["jobs"][0]["id"] == started[-1], answers[0]["jobs"][0]["id"]
            assert answers[1]["job"]["status"] == "completed", answers[1]["job"]["status"]

        runs = [first_answers(("--db", _uncached(db)), paths, check) for _ in range(repeat)]
        baseline = [first_answers(("--memory",), ["/api/jobs"]) for _ in range(repeat)]
    return {"name": "journal_restart", "jobs": jobs, "db_bytes": size, "run_s": run_s, "paths": paths,
            "runs": runs, **_median_answers(runs, baseline)}


# ---------------------------------------------------------------- all of it


def benchmarks(quick: bool = False) -> list[tuple[str, Callable[[], dict]]]:
    """(label, run) of each journal benchmark, full or quick, for bench/run.py."""
    return [
        ("journal throughput", lambda: throughput(20_000 if quick else 100_000)),
        ("journal stream delay", lambda: stream_delay(seconds=3 if quick else 10, repeat=1 if quick else 2)),
        ("journal disk", lambda: disk(*((10_000, 20_000) if quick else (50_000, 100_000)))),
        ("journal start-up", lambda: startup(100 if quick else 1_000, repeat=1 if quick else 2)),
        ("journal restart", lambda: restart(1_000 if quick else 3_000, repeat=1 if quick else 3)),
    ]


def main() -> None:
    args = common.arguments(__doc__).parse_args()
    for label, run in benchmarks(args.quick):
        print(f"{label} ...", flush=True)
        print(json.dumps(run(), indent=1))


if __name__ == "__main__":
    main()
