"""The benchmark suite's entry point: runs every benchmark with its baseline, prints a table,
writes the results as JSON and (with matplotlib installed) docs/bench-delay.png.

    python bench/run.py [--quick] [--json PATH] [--plot PATH] [--only PREFIX]

`--quick` finishes within about two minutes (fewer and shorter points); docs/benchmarks.md holds
the table of a full run. `--only redis` runs only the benchmarks whose label starts with `redis`;
with `--json`, their results replace those of the same name in that file and the others stay.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import math
import os
import sys
import time

import common
import core
import fanout
import journal
import leaving
import memory
import snapshot


def _load_bench(name: str):
    """bench/<name>.py as module `bench_<name>`: bench/redis.py cannot be imported as `redis`,
    which is redis-py's name."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(common.BENCH, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


redisbench = _load_bench("redis")
sys.modules["bench_redis"] = redisbench  # bench/oncelery.py builds on it
celerybench = importlib.import_module("oncelery") if importlib.util.find_spec("celery") else None
scalingbench = importlib.import_module("scaling")  # builds on bench_redis too


def _fmt(value: float, unit: str = "") -> str:
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if abs(value) >= 100:
        return f"{value:,.0f}{unit}"
    return f"{value:.3g}{unit}"


def _growth_row(label: str, result: dict) -> tuple[str, str, str, str]:
    """The row of `common.growth`'s figures, against the target both growth benchmarks share."""
    return (label, _fmt(result["ratio_large_small"], "×"), _fmt(result["baseline_ratio_large_small"], "×"),
            "target ≤ 1.5×")


def _bytes(value: float) -> str:
    return f"{value / 2**20:,.0f} MB" if value >= 2**20 else f"{value:,.0f} B"


def _signed(value: float, unit: str = "") -> str:
    return ("+" if value >= 0 else "") + _fmt(value, unit)


def _journal_rows(r: dict) -> list[tuple[str, str, str, str]]:
    """The rows of one of bench/journal.py's results: journaled vs in memory."""
    if r["name"] == "journal_throughput":
        return [(f"journal: transitions/s until durable, {r['steps']}-step job of {r['children']:,} children",
                 _fmt(r["transitions_per_s"], "/s"), _fmt(r["baseline_transitions_per_s"], "/s") + " (memory)",
                 f"{r['ratio']:.2f}× (target ≥ {r['target_ratio']:.2f}×)"),
                ("journal: that job's wall: settled / durable",
                 f"{_fmt(r['settled_s'], ' s')} / {_fmt(r['wall_s'], ' s')}",
                 _fmt(r["baseline_wall_s"], " s") + " (memory)", "")]
    if r["name"] == "journal_stream_delay":
        ours, theirs = r["journal"], r["memory"]
        return [(f"journal: stream {r['clients']} clients @ {r['rate']:,.0f}/s: p50/p99 delay, server cpu, disk writes",
                 f"{_fmt(ours['p50_ms'])}/{_fmt(ours['p99_ms'])} ms, cpu {ours['server_cpu_pct']:.0f}%, "
                 f"{_fmt(ours['server_written_mb_per_s'])} MB/s",
                 f"{_fmt(theirs['p50_ms'])}/{_fmt(theirs['p99_ms'])} ms, cpu {theirs['server_cpu_pct']:.0f}%, "
                 f"{_fmt(theirs['server_written_mb_per_s'])} MB/s (memory)",
                 f"{_signed(r['added_p50_ms'])}/{_signed(r['added_p99_ms'])} ms"
                 f" (target p50 ≤ +{r['target_added_p50_ms']:.0f})")]
    if r["name"] == "journal_disk":
        return [("journal: disk per child (no log lines; of which its events)",
                 f"{_bytes(r['bytes_per_child'])} ({_bytes(r['bytes_per_child_events'])})", "", ""),
                ("journal: disk per log line", _bytes(r["bytes_per_line"]), "", "")]
    answered, memory = r["answered_s"], _fmt(r["baseline_answered_s"], " s") + " (--memory)"
    if r["name"] == "journal_startup":
        return [(f"journal: start-up on {r['children']:,} children + {r['lines']:,} log lines"
                 f" ({_bytes(r['db_bytes'])}): first GET /api/jobs", _fmt(answered[0], " s"), memory,
                 f"target < {r['target_s']:.0f} s"),
                ("journal: start-up: then the oldest job, its children page, its logs page",
                 " / ".join(_fmt(s, " s") for s in answered[1:4]), "", f"RSS {r['rss_mb']:.0f} MB")]
    return [(f"journal: restart with {r['jobs']:,} finished jobs ({_bytes(r['db_bytes'])}): first GET /api/jobs",
             _fmt(answered[0], " s"), memory, "")]


def _redis_rows(r: dict) -> list[tuple[str, str, str, str]]:
    """The rows of one of bench/redis.py's results: through Redis vs one process in memory."""
    if r["name"].startswith("redis_throughput_"):
        what = (f"{r['children']:,} children of ~{r['child_ms']:.0f} ms CPU" if r["child"] == "spin"
                else f"{r['children']:,} no-op children")
        if r.get("spawners"):
            what += f" spawned by {r['spawners']} children"
        rounds = f", median of {r['repeats']} rounds" if r.get("repeats", 1) > 1 else ""
        base = _fmt(r["baseline_transitions_per_s"], "/s") + f" (memory, 1 process × {r['threads_per_process']})"
        rows = []
        for key, run in r["runs"].items():
            if key == "memory":
                continue
            rows.append((f"redis: transitions/s, {what}, {run['processes']} worker process"
                         f"{'es' if run['processes'] > 1 else ''} × {r['threads_per_process']}, "
                         f"appendfsync {run['fsync']}{rounds}",
                         _fmt(run["transitions_per_s"], "/s"), base, _fmt(r["ratios"][key], "×")))
        for policy in sorted({run["fsync"] for key, run in r["runs"].items() if key != "memory"}):
            one, two = (next((run for k, run in r["runs"].items() if k != "memory" and run["fsync"] == policy
                              and run["processes"] == n), None) for n in (1, 2))
            if one is not None and two is not None:
                rows.append((f"redis: {what}, appendfsync {policy}: 2 vs 1 worker processes", "", "",
                             _fmt(two["transitions_per_s"] / one["transitions_per_s"], "×")))
        return rows
    if r["name"] == "redis_stream_delay":
        ours, theirs = r["redis"], r["memory"]
        return [(f"redis: stream delay, log on a worker → SSE client of another server, {r['rate']:,.0f} lines/s:"
                 " p50/p99", f"{_fmt(ours['p50_ms'])}/{_fmt(ours['p99_ms'])} ms",
                 f"{_fmt(theirs['p50_ms'])}/{_fmt(theirs['p99_ms'])} ms (memory, 1 process)",
                 f"{_signed(r['added_p50_ms'])}/{_signed(r['added_p99_ms'])} ms")]
    rows = []
    for key, label in (("children", "retained no-op children"), ("lines", "log lines")):
        m = r[key]
        rows.append((f"redis: used_memory per 100,000 {label} (from {m['count']:,}; of which event stream"
                     " / once keys)", f"{_bytes(m['bytes_per_100k'])} ({_bytes(m['events_bytes_per_100k'])}"
                     f" / {_bytes(m['once_bytes_per_100k'])})", "", f"{_fmt(m['per_s'])}/s written"))
    return rows


def _celery_rows(r: dict) -> list[tuple[str, str, str, str]]:
    """The rows of one of bench/oncelery.py's results: 2 Celery workers vs 2 stepstream Redis
    workers and one process in memory."""
    if r["name"] == "celery_stream_delay":
        runs = r["runs"]

        def delay(run: dict) -> str:
            return f"{_fmt(run['p50_ms'])}/{_fmt(run['p99_ms'])} ms"

        label = f"celery: stream delay p50/p99 at {r['rate']:,.0f} log lines/s, 2 Celery workers vs"
        return [(f"{label} 2 stepstream Redis workers", delay(runs["celery_2"]), delay(runs["redis_2"]),
                 _fmt(runs["celery_2"]["p99_ms"] / runs["redis_2"]["p99_ms"], "× (p99)")),
                (f"{label} memory, 1 process", delay(runs["celery_2"]), delay(runs["memory"]),
                 _fmt(runs["celery_2"]["p99_ms"] / runs["memory"]["p99_ms"], "× (p99)"))]
    what = f"{r['children']:,} " + ("children of ~2 ms CPU" if r["name"].endswith("_spin") else "no-op children")
    rounds = f", median of {r['repeats']} rounds" if r.get("repeats", 1) > 1 else ""
    runs, per = r["runs"], f" × {r['threads_per_process']}"
    return [(f"celery: children/s, {what}, 2 Celery worker processes{per} vs 2 stepstream Redis workers{per}{rounds}",
             _fmt(runs["celery_2"]["children_per_s"], "/s"), _fmt(runs["redis_2"]["children_per_s"], "/s"),
             _fmt(r["celery_vs_redis"], "×")),
            (f"celery: children/s, {what}, 2 Celery worker processes{per} vs memory, 1 process{per}",
             _fmt(runs["celery_2"]["children_per_s"], "/s"), _fmt(runs["memory"]["children_per_s"], "/s"),
             _fmt(r["ratios_vs_memory"]["celery_2"], "×"))]


def _scaling_rows(r: dict) -> list[tuple[str, str, str, str]]:
    """The rows of one of bench/scaling.py's results: one Redis's CPU per child and per line (and
    the rate one saturated core would carry), and two Redis shards vs one."""
    rounds = f", median of {r['repeats']}" if r.get("repeats", 1) > 1 else ""
    if r["name"] == "scaling_ceiling":
        runs, who = r["runs"], f"{r['workers']} worker processes × {r['threads_per_process']}"
        rows = []
        for key, what in (("noop", "no-op child, appendfsync everysec"), ("noop_always", "no-op child, always"),
                          ("lines", f"child that logs {r['lines_per_child']} lines, everysec")):
            if key in runs:
                run = runs[key]
                rows.append((f"scaling: redis-server main-thread CPU per {what} ({who}{rounds})",
                             _fmt(run["redis_main_us_per_child"], " µs"),
                             f"{_fmt(run['children_per_s'], '/s')} children, redis {run['redis_main_thread_pct']:.0f}%"
                             " of a core", f"one core: {_fmt(1e6 / run['redis_main_us_per_child'], '/s')}"))
        rows.append(("scaling: redis-server main-thread CPU per log line (beyond a no-op child)",
                     _fmt(r["redis_main_us_per_line"], " µs"), "",
                     f"one core: {_fmt(r['ceiling_lines_per_s'] or float('inf'), '/s')}"))
        noop, lines = runs["noop"], runs["lines"]
        rows.append(("scaling: events per no-op child / per logging child; bytes per event in the stream",
                     f"{noop['events_per_child']:.2f} / {lines['events_per_child']:.1f}",
                     f"{_bytes(noop['event_bytes'])} / {_bytes(lines['event_bytes'])}",
                     f"once keys: {noop['once_keys_per_child']:.2f} / {lines['once_keys_per_child']:.1f} per child"))
        rows.append(("scaling: a process's tail, CPU per event read and decoded (no-op / logging children's events)",
                     f"{_fmt(noop['tail_us_per_event'], ' µs')} / {_fmt(lines['tail_us_per_event'], ' µs')}", "",
                     f"one core: {_fmt(1e6 / noop['tail_us_per_event'], '/s')} events"))
        return rows
    one, two = r["runs"]["one"], r["runs"]["two"]
    us = " / ".join(_fmt(v, " µs") for v in two["redis_main_us_per_child"])
    rows = [(f"scaling: children/s, {r['children']:,} {r['kind']} children in {r['jobs']} jobs: 2 Redis × 1 worker"
             f" process vs 1 Redis × 2 ({r['cpus']} cores{rounds})", _fmt(two["children_per_s"], "/s"),
             _fmt(one["children_per_s"], "/s"), _fmt(r["two_vs_one"], "×")),
            ("scaling: redis-server main-thread CPU per child; machine busy: 2 Redis vs 1 Redis",
             f"{us}, busy {two['machine_busy_pct']:.0f}%",
             f"{_fmt(one['redis_main_us_per_child'][0], ' µs')}, busy {one['machine_busy_pct']:.0f}%", "")]
    if "one_half_jobs" in r["runs"]:  # the diagnostic: one Redis with as many jobs as each shard has
        half = r["runs"]["one_half_jobs"]
        rows.append((f"scaling: children/s, the same children in {half['jobs']} jobs on 1 Redis × 2 worker processes",
                     _fmt(half["children_per_s"], "/s"), _fmt(one["children_per_s"], "/s") + f" ({r['jobs']} jobs)",
                     _fmt(half["children_per_s"] / one["children_per_s"], "×")))
    return rows


def rows_of(results: list[dict]) -> list[tuple[str, str, str, str]]:
    """(benchmark, stepstream, baseline, ratio) rows for the table."""
    rows = []
    for r in results:
        if r["name"].startswith("journal_"):
            rows += _journal_rows(r)
        elif r["name"].startswith("redis_"):
            rows += _redis_rows(r)
        elif r["name"].startswith("celery_"):
            rows += _celery_rows(r)
        elif r["name"].startswith("scaling_"):
            rows += _scaling_rows(r)
        elif r["name"] == "progress_cost":
            for row in r["rows"]:
                rows.append((f"progress cost per transition, {row['children']:,} children",
                             _fmt(row["us_per_transition"], " µs"), _fmt(row["baseline_us_per_transition"], " µs"),
                             _fmt(row["baseline_us_per_transition"] / row["us_per_transition"], "×")))
            rows.append(_growth_row("progress cost growth 100k/1k children", r))
        elif r["name"] == "core_throughput":
            rows.append((f"core: transitions/s, orchestrator + idle hub ({r['children']:,} children)",
                         _fmt(r["transitions_per_s"], "/s"), _fmt(r["baseline_transitions_per_s"], "/s") + " (no hub)",
                         _fmt(r["ratio"], "×")))
            rows.append((f"core: {r['steps']}-step job of {r['children']:,} no-op children, wall",
                         _fmt(r["wall_s"], " s"), _fmt(r["baseline_wall_s"], " s") + " (no hub)", "target < 10 s"))
            rows.append(("core: transitions/s, store alone (no thread pool)",
                         _fmt(r["store_only_transitions_per_s"], "/s"), "", "target ≥ 100,000/s"))
        elif r["name"] == "core_collector":
            for settings, said in (("default", "CPython's collector settings"), ("tuned", "tune_gc(), as served")):
                rows.append((f"core: orchestrator vs store alone, {said} (fresh processes)",
                             _fmt(r[f"job_{settings}"], "/s"), _fmt(r[f"store_{settings}"], "/s") + " (store alone)",
                             _fmt(r[f"job_vs_store_{settings}"], "×") + " (target ≥ 0.8×)"))
            rows.append(("core: orchestrator, tune_gc() vs CPython's settings", _fmt(r["job_tuned"], "/s"),
                         _fmt(r["job_default"], "/s"), _fmt(r["tuned_vs_default_job"], "×")))
        elif r["name"] == "snapshot_cost":
            for row in r["rows"]:
                rows.append((f"GET /api/jobs/{{id}}, {row['children']:,} children", _fmt(row["ms"], " ms"),
                             _fmt(row["baseline_ms"], " ms") + " (scan)", _fmt(row["baseline_ms"] / row["ms"], "×")))
            rows.append(_growth_row("snapshot growth 100k/1k children", r))
        elif r["name"] == "memory_children":
            rows.append(("RSS per 100,000 retained children", _fmt(r["mb_per_100k_children"], " MB"),
                         _fmt(r["baseline_mb_per_100k_children"], " MB") + " (dicts)", _fmt(r["ratio"], "×")))
        elif r["name"] == "leaving_clients":
            for storage, f in r["results"].items():
                d, a = f["during_job"], f["after_leaving"]
                rows.append((f"{r['clients']} clients stop reading, then leave ({storage}): /api/health p50/p99/max, "
                             "during the job / after they left",
                             f"{_fmt(d['p50_ms'])}/{_fmt(d['p99_ms'])}/{_fmt(d['max_ms'])} ms / "
                             f"{_fmt(a['p50_ms'])}/{_fmt(a['p99_ms'])}/{_fmt(a['max_ms'])} ms", "",
                             "target ≤ 100 ms"))
        elif r["name"] == "fanout":
            by_app = {app: {run["clients"]: run for run in runs} for app, runs in r["runs"].items()}
            for clients, ours in by_app["stepstream"].items():
                theirs = by_app["naive"][clients]
                naive_points = {p["rate"]: p for p in theirs["points"]}
                for p in ours["points"]:
                    q = naive_points.get(p["rate"])
                    base = (f"{_fmt(q['p50_ms'])}/{_fmt(q['p99_ms'])} ms, cpu {q['server_cpu_pct']:.0f}%"
                            if q else "not run (failed a lower rate)")
                    rows.append((f"stream {clients} clients @ {p['rate']:,.0f}/s: p50/p99 delay, server cpu, rss",
                                 f"{_fmt(p['p50_ms'])}/{_fmt(p['p99_ms'])} ms, cpu {p['server_cpu_pct']:.0f}%, "
                                 f"{p['server_rss_mb']:.0f} MB", base,
                                 _fmt(q["p99_ms"] / p["p99_ms"], "× (p99)") if q and p["p99_ms"] else ""))
                for p in ours["points"]:
                    q = naive_points.get(p["rate"])
                    if "server_cpu_us_per_event" in p:
                        rows.append((f"stream {clients} clients @ {p['rate']:,.0f}/s: server CPU per delivered event",
                                     _fmt(p["server_cpu_us_per_event"], " µs"),
                                     _fmt(q["server_cpu_us_per_event"], " µs") if q else "not run",
                                     _fmt(p["server_cpu_us_per_event"] / q["server_cpu_us_per_event"], "×")
                                     if q and q["server_cpu_us_per_event"] else ""))
                summary = r["summary"].get(clients) or r["summary"][str(clients)]  # str keys once read from JSON
                theirs_rates = [p["rate"] for p in theirs["points"]]
                bound = "≥ " if ours["max_rate_is_lower_bound"] else ""
                rows.append((f"stream {clients} clients: highest rate with p99 < 1 s",
                             f"{bound}{summary['max_rate']:,}/s",
                             f"{summary['baseline_max_rate']:,}/s" if summary["baseline_max_rate"]
                             else f"< {min(theirs_rates):,}/s (lowest rung)",
                             _fmt(summary["max_rate_ratio"], "×") if summary["baseline_max_rate"]
                             else f"> {summary['max_rate'] / min(theirs_rates):.0f}×"))
                rows.append((f"stream {clients} clients: RSS per idle connection",
                             _fmt(summary["rss_per_connection_kb"], " KB"),
                             _fmt(summary["baseline_rss_per_connection_kb"], " KB"),
                             _fmt(summary["rss_per_connection_kb"]
                                  / max(summary["baseline_rss_per_connection_kb"], 1e-9), "×")))
    return rows


def table(rows: list[tuple[str, str, str, str]]) -> str:
    lines = ["| benchmark | stepstream | baseline | ratio |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def plot(result: dict, path: str) -> bool:
    """Delay percentiles vs clients, one line per (server, rate, percentile). False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for app, style in (("stepstream", "-"), ("naive", "--")):
        runs = sorted(result["runs"][app], key=lambda run: run["clients"])
        for rate in (1000, 5000):
            for pct, marker in (("p50_ms", "o"), ("p99_ms", "s")):
                xs, ys = [], []
                for run in runs:
                    point = next((p for p in run["points"] if p["rate"] == rate), None)
                    if point is not None:
                        xs.append(run["clients"])
                        ys.append(min(point[pct], 60_000))  # a lost probe is infinite: clip
                if xs:
                    ax.plot(xs, ys, style, marker=marker, label=f"{app} {rate:,}/s {pct[:3]}")
    ax.axhline(1000, color="grey", lw=0.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("stream clients")
    ax.set_ylabel("delay change → client (ms)")
    ax.set_title("Stream delay vs clients (2 cores, shared)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main() -> None:
    parser = common.arguments(__doc__)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--plot", default=os.path.join(common.ROOT, "docs", "bench-delay.png"))
    parser.add_argument("--only", metavar="PREFIX", help="run only the benchmarks whose label starts with this")
    args = parser.parse_args()
    q = args.quick
    started = time.perf_counter()
    steps = [
        ("progress cost", lambda: core.progress_cost(sizes=(1_000, 100_000) if q else (1_000, 10_000, 100_000),
                                                     repeat=1 if q else 3)),
        ("core throughput", lambda: core.core_throughput(20_000 if q else 100_000)),
        ("core collector", lambda: core.collector(20_000 if q else 100_000, 1 if q else 3)),
        ("snapshot cost", lambda: snapshot.snapshot_cost(repeat=20 if q else 50)),
        ("memory", lambda: memory.retained_children(20_000 if q else 100_000)),
        ("stream fan-out", lambda: fanout.fanout(quick=q)),
        ("stream leaving clients", lambda: leaving.leaving_clients(20_000 if q else 100_000)),
        *journal.benchmarks(q),
        *redisbench.benchmarks(q),
        *(celerybench.benchmarks(q) if celerybench else []),  # needs the extra stepstream[celery]
        *scalingbench.benchmarks(q),
    ]
    if args.only:
        steps = [(label, run) for label, run in steps if label.startswith(args.only)]
    results = []
    for label, run in steps:
        print(f"{label} ...", flush=True)
        t0 = time.perf_counter()
        results.append(run())
        results[-1]["seconds"] = time.perf_counter() - t0
        results[-1]["load_average"] = os.getloadavg()  # the machine is shared: how busy it was meanwhile
        gc.collect()
    print()
    print(table(rows_of(results)))
    loads = [r["load_average"][1] for r in results]
    print(f"\n{'quick' if q else 'full'} run, {time.perf_counter() - started:.0f} s, {os.cpu_count()} cores, "
          f"load average (5 min) {min(loads):.1f}–{max(loads):.1f}")
    if args.json:
        kept = []
        if args.only and os.path.exists(args.json):  # a partial run: the file's other results stay
            with open(args.json) as f:
                kept = json.load(f)["results"]
            names = [r["name"] for r in results]
            kept = [r for r in kept if r["name"] not in names]
        with open(args.json, "w") as f:
            json.dump({"quick": q, "cpus": os.cpu_count(), "results": kept + results}, f, indent=1,
                      default=lambda v: None)
    fan = next((r for r in results if r["name"] == "fanout"), None)
    if fan is not None and not q and plot(fan, args.plot):
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
