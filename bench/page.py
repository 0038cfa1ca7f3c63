"""The page under a big job: DOM size and the longest main-thread task while it runs.

Runs a job of `--children` children over 5 steps (each child logs a line) with the page open in
headless Chromium, and prints the DOM node count (sampled while it runs, and at the end) and the
longest long task the browser reported (PerformanceObserver 'longtask').

    python bench/page.py                      # 20,000 children over 5 steps
    python bench/page.py --children 5000 --workers 4
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import common  # noqa: F401  (puts the repo root on sys.path, for tests/)
from playwright.sync_api import sync_playwright

from harness.browser import LAUNCH_ARGS, find_chromium
from harness.live import LiveServer
from stepstream import Orchestrator, Step
from stepstream.server import create_app

STEPS = 5

# Installed before the page's own script: keeps the longest long task and a count.
OBSERVE_LONG_TASKS = """
window.__longtasks = {count: 0, max: 0, total: 0};
new PerformanceObserver(list => {
  for (const entry of list.getEntries()) {
    const t = window.__longtasks;
    t.count += 1; t.total += entry.duration; t.max = Math.max(t.max, entry.duration);
  }
}).observe({type: 'longtask', buffered: true});
window.__nodes = {max: 0, last: 0};
setInterval(() => {
  const n = document.getElementsByTagName('*').length;
  window.__nodes.last = n; window.__nodes.max = Math.max(window.__nodes.max, n);
}, 50);
"""


def definition(per_step: int, fail_rate: float, child_ms: float = 0) -> list[Step]:
    def child(ctx, n):
        if child_ms:
            time.sleep(child_ms / 1000)
        ctx.log("info" if n % 10 else "warning", f"{ctx.step_name}: item {n} processed")
        if random.random() < fail_rate:
            raise ValueError(f"item {n} rejected")

    def crawl(ctx):  # crawler style: half the children found below the first ones
        first = [ctx.spawn(child, n) for n in range(per_step // 2)]
        for n, parent in enumerate(first):
            ctx.orchestrator.spawn(child, per_step // 2 + n, parent_id=parent)

    def agents(ctx):  # agent style
        for n in range(per_step):
            ctx.orchestrator.spawn(child, n, step_id=ctx.step_id)

    handlers = [crawl, agents, crawl, agents, crawl]
    return [Step(f"step_{i + 1}", handlers[i]) for i in range(STEPS)]


def main_thread_tasks(trace_path: str) -> list[tuple[float, float]]:
    """(wall ms, main-thread CPU ms) of each task on the page's renderer main thread."""
    with open(trace_path) as f:
        events = json.load(f)["traceEvents"]
    threads = {
        (e["pid"], e["tid"])
        for e in events
        if e.get("name") == "thread_name" and e["args"].get("name") == "CrRendererMain"
    }
    tasks: dict = collections.defaultdict(list)
    for e in events:
        if (
            e.get("ph") == "X"
            and e.get("name") in ("RunTask", "ThreadControllerImpl::RunTask")
            and (e["pid"], e["tid"]) in threads
        ):
            tasks[(e["pid"], e["tid"])].append((e.get("dur", 0) / 1000, e.get("tdur", 0) / 1000))
    return max(tasks.values(), key=len) if tasks else []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--children", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--fail-rate", type=float, default=0.01)
    parser.add_argument("--child-ms", type=float, default=0, help="simulated work per child")
    parser.add_argument(
        "--no-trace", action="store_true", help="skip the Chrome trace that gives each task's main-thread CPU time"
    )
    args = parser.parse_args()

    chromium, reason = find_chromium()
    if chromium is None:
        print(f"bench/page.py: {reason}", file=sys.stderr)
        return 2

    orch = Orchestrator(max_workers=args.workers, capture_level=None)
    orch.define("big", definition(args.children // STEPS, args.fail_rate, args.child_ms))
    server = LiveServer(create_app(orch)).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=LAUNCH_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.add_init_script(OBSERVE_LONG_TASKS)
            page.goto(server.url + "/")
            page.wait_for_selector("[data-connection=live]")

            trace_path = tempfile.mktemp(suffix=".json")
            if not args.no_trace:
                browser.start_tracing(page=page, path=trace_path, categories=["toplevel", "devtools.timeline"])
            started = time.monotonic()
            job_id = orch.start("big")
            done = threading.Event()
            final: dict = {}

            def wait() -> None:
                final.update(orch.wait(job_id, timeout=600))
                done.set()

            threading.Thread(target=wait, daemon=True).start()
            while not done.is_set():
                page.wait_for_timeout(100)  # let the page run; its own timer samples the DOM size
            nodes_running = page.evaluate("window.__nodes.max")
            ran = time.monotonic() - started

            # The page has caught up when its job row shows the final status and counts.
            status = final["job"]["status"]
            page.wait_for_function(
                "([id, status, total]) => { const el = document.querySelector(`[data-job='${id}']`);"
                " return el && el.dataset.status === status && [...el.querySelectorAll('[data-step]')]"
                ".reduce((n, s) => n + Number(s.dataset.total), 0) === total; }",
                arg=[job_id, status, final["job"]["progress"]["total"]],
                timeout=60_000,
            )
            caught_up = time.monotonic() - started - ran
            nodes_end = page.evaluate("document.getElementsByTagName('*').length")
            long_tasks = page.evaluate("window.__longtasks")
            shown_lines = page.evaluate("document.querySelectorAll('[data-job] li[data-seq]').length")
            heap = page.evaluate("performance.memory ? performance.memory.usedJSHeapSize : 0")
            if not args.no_trace:
                browser.stop_tracing()
            browser.close()
    finally:
        server.stop()
        orch.shutdown(wait=False)

    job = final["job"]
    print(
        f"job: {job['progress']['total']} children over {STEPS} steps, {job['status']}, "
        f"{job['log_count']} log lines, ran {ran:.1f} s with {args.workers} workers; "
        f"page caught up {caught_up:.2f} s after the end"
    )
    print(
        f"DOM nodes (document.getElementsByTagName('*').length): at most {nodes_running} while it ran "
        f"(sampled every 50 ms in the page), {nodes_end} at the end"
    )
    print(f"log lines in the DOM at the end: {shown_lines}")
    print(
        f"long tasks (>50 ms) while it ran: {long_tasks['count']}, longest {long_tasks['max']:.0f} ms, "
        f"total {long_tasks['total']:.0f} ms"
    )
    if not args.no_trace:
        tasks = main_thread_tasks(trace_path)
        Path(trace_path).unlink(missing_ok=True)
        long = [t for t in tasks if t[0] > 50]
        print(
            f"trace: {len(tasks)} main-thread tasks; {len(long)} over 50 ms wall; longest wall "
            f"{max(t[0] for t in tasks):.0f} ms; most main-thread CPU in one task "
            f"{max(t[1] for t in tasks):.0f} ms; tasks over 50 ms of CPU: {sum(t[1] > 50 for t in tasks)}"
        )
        print("(wall time includes waiting for a CPU: this 2-core machine also runs the job and the server)")
    if heap:
        print(f"JS heap at the end: {heap / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
