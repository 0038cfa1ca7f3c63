"""Soak: many stream clients under load, a tenth of them dropping and resuming every few seconds.

    python bench/soak.py [--seconds 60] [--clients 100]

The server (its own process here; a thread in tests/test_soak.py) runs `soak` jobs back to back,
two of them cancelled mid-run by one of their own children. Every client folds the stream into
job states with tests/folding.py's `fold`. Each round a random tenth of the clients disconnect;
half resume at once with `Last-Event-ID` (the replay path), half stay away longer than the
replay ring lasts (the fresh-`snapshot` path). At the end:

- every client's folded state of every job it holds equals that job's final snapshot;
- no gap went unflagged: within every stretch of a client's stream that started at a snapshot
  or a resume, the never-merged events (log lines, manager and step `job_status`) it received
  are exactly those a reference client, which never disconnects, received over the same seqs;
  seqs only go up, and each log's `manager_log_count` is one more than the previous one;
- server memory at the end is within 10% of where it settled after warm-up (once the replay
  ring has filled and turned over and finished jobs are being evicted: until then it grows by
  design).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from array import array
from dataclasses import dataclass, field

import common
import httpx

from harness.folding import fold
from harness.live import sse_events
from stepstream import Orchestrator, Step
from stepstream.model import Conflict

CHILDREN_PER_STEP = 400
REPLAY_SIZE = 20_000
CANCEL_AT = 150  # in the second step of a cancelled job, this child cancels its manager
NEVER_MERGED = ("log", "job_status")


# ---------------------------------------------------------------- the server side


def _work(ctx, i: int, cancel_at: int | None) -> None:
    time.sleep(0.002)  # the child's "work"
    if i % 10 == 0:
        ctx.log("info", f"child {i} of {ctx.step_name}")
    if i == cancel_at:
        try:
            ctx.orchestrator.cancel(ctx.manager_id)
        except Conflict:
            pass
    if i % 97 == 13:
        raise RuntimeError(f"child {i} fails on purpose")


def _fan_out(ctx) -> None:
    cancel_at = ctx.params.get("cancel_at") if ctx.step_name == "b" else None
    for i in range(ctx.params.get("children", CHILDREN_PER_STEP)):
        if ctx.cancelled:
            return
        try:
            ctx.spawn(_work, i, cancel_at, retries=1 if i % 5 == 0 else 0)
        except Conflict:  # the job was cancelled meanwhile
            return


def define_soak(orch: Orchestrator) -> None:
    orch.define("soak", [Step("a", _fan_out), Step("b", _fan_out), Step("c", _fan_out)])
    orch.define("marker", [Step("only", common.noop)])  # its first event tells clients to stop


def soak_orchestrator(replay_size: int = REPLAY_SIZE) -> Orchestrator:
    """A small replay ring (resumes after a long absence hit the snapshot path) and few
    retained finished jobs (memory must stay flat over many jobs)."""
    orch = Orchestrator(max_workers=4, replay_size=replay_size, max_finished=3, capture_level=None)
    define_soak(orch)
    return orch


def drive(orch: Orchestrator, seconds: float, cancel: tuple[int, ...] = (1, 3), min_jobs: int = 5,
          max_jobs: int = 1000, children: int = CHILDREN_PER_STEP,
          finals: dict[str, dict] | None = None) -> tuple[dict[str, dict], str]:
    """Run `soak` jobs of `children` per step one after another for `seconds` (at least
    `min_jobs`); the ones numbered in `cancel` cancel themselves mid-run. Fills and returns
    `finals` (each job's final snapshot) and the marker job's id."""
    finals = {} if finals is None else finals
    deadline = time.monotonic() + seconds
    while len(finals) < max_jobs and (len(finals) < min_jobs or time.monotonic() < deadline):
        params: dict = {"children": children}
        if len(finals) in cancel:
            params["cancel_at"] = min(CANCEL_AT, children // 2)
        job = orch.start("soak", params)
        finals[job] = orch.wait(job, timeout=120)["job"]
    marker = orch.start("marker")
    orch.wait(marker, timeout=60)
    return finals, marker


# ---------------------------------------------------------------- the client side


@dataclass
class Segment:
    """A stretch of one client's stream that began at a snapshot or a resume."""

    base: int  # the snapshot's seq, or the seq resumed after
    last: int  # the last seq received in it
    never_merged: array = field(default_factory=lambda: array("q"))  # no object per seq


class SoakClient(threading.Thread):
    """A stream client that folds every job it sees; disconnects when `interrupt` is set."""

    def __init__(self, url: str, name: str, deadline: float) -> None:
        super().__init__(name=name, daemon=True)
        self.url = url
        self.deadline = deadline
        self.interrupt = threading.Event()
        self.pause = 0.0  # how long to stay away after the next interrupt
        self.jobs: dict[str, dict] = {}
        self._pending: dict[str, list[tuple[str, dict]]] = {}
        self._log_counts: dict[str, int] = {}
        self.segments: list[Segment] = []
        self.last_id: str | None = None
        self.last_seq = 0
        self.resumes = {"replay": 0, "snapshot": 0}
        self.events = 0
        self.errors: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        try:
            with httpx.Client(timeout=httpx.Timeout(30.0)) as http:
                while not self.done.is_set() and time.monotonic() < self.deadline:
                    self._connect(http)
                    if self.done.is_set() or time.monotonic() >= self.deadline:
                        break
                    time.sleep(self.pause)  # offline for a while: load, not synchronisation
        except Exception as exc:  # reported, not raised: the check lists every client's errors
            self.errors.append(f"{self.name}: {type(exc).__name__}: {exc}")
        finally:
            self._flush()
            self.done.set()

    def _connect(self, http: httpx.Client) -> None:
        headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
        resuming = self.last_id is not None
        self.interrupt.clear()
        with http.stream("GET", f"{self.url}/api/events", headers=headers) as response:
            if response.status_code != 200:
                raise RuntimeError(f"stream answered {response.status_code}")
            first = True
            for event in sse_events(response):
                self._receive(event["event"], event["data"], first and resuming)
                self.last_id, first = event["id"], False
                if self.done.is_set() or self.interrupt.is_set() or time.monotonic() >= self.deadline:
                    return

    def _receive(self, type_: str, data: dict, resumed: bool) -> None:
        self.events += 1
        seq = data["seq"]
        if type_ == "snapshot":
            if resumed:
                self.resumes["snapshot"] += 1
            if seq < self.last_seq:
                self.errors.append(f"{self.name}: snapshot at seq {seq} after seq {self.last_seq}")
            self._pending.clear()
            self.jobs = {job["id"]: job for job in data["jobs"]}
            self._log_counts = {job["id"]: job["log_count"] for job in data["jobs"]}
            self.segments.append(Segment(seq, seq))
            self.last_seq = seq
            if any(job["definition"] == "marker" for job in data["jobs"]):
                self.done.set()
            return
        if resumed:
            self.resumes["replay"] += 1
            self.segments.append(Segment(self.last_seq, self.last_seq))
        if seq <= self.last_seq:
            self.errors.append(f"{self.name}: seq {seq} ({type_}) after seq {self.last_seq}: repeated or out of order")
        self.last_seq = seq
        segment = self.segments[-1]
        segment.last = seq
        manager_id = data["manager_id"]
        if type_ == "job_status" and data["kind"] == "manager" and manager_id not in self.jobs:
            self.jobs[manager_id] = data["job"]
            self._log_counts[manager_id] = data["job"]["log_count"]
            if data["job"]["definition"] == "marker":
                self.done.set()
        if type_ in NEVER_MERGED:
            segment.never_merged.append(seq)
        if type_ == "log" and manager_id in self._log_counts:
            expected = self._log_counts[manager_id] + 1
            if data["manager_log_count"] != expected:
                self.errors.append(f"{self.name}: log at seq {seq} has manager_log_count "
                                   f"{data['manager_log_count']}, expected {expected}: a lost line")
            self._log_counts[manager_id] = data["manager_log_count"]
        if manager_id in self.jobs:
            pending = self._pending.setdefault(manager_id, [])
            pending.append((type_, data))
            if len(pending) >= 500:
                self._flush()

    def _flush(self) -> None:
        for manager_id, events in self._pending.items():
            self.jobs[manager_id] = fold(self.jobs[manager_id], events)
        self._pending.clear()


def disconnect_rounds(clients: list[SoakClient], stop: threading.Event, period: float, pause: float,
                      rng: random.Random) -> int:
    """Every `period` s a random tenth of `clients` disconnect: half resume at once, half after
    `pause` s. Bounded by `stop`. Returns how many disconnects it caused."""
    caused = 0
    while not stop.wait(period):
        live = [c for c in clients if not c.done.is_set()]
        for client in rng.sample(live, max(1, len(live) // 10)) if live else []:
            client.pause = rng.choice((0.0, pause))
            client.interrupt.set()
            caused += 1
    return caused


def check(clients: list[SoakClient], reference: SoakClient, finals: dict[str, dict]) -> dict:
    """Every property of the module docstring but memory; returns figures and `problems`."""
    problems: list[str] = []
    compared = 0
    for client in [reference, *clients]:
        problems += client.errors
        if not client.done.is_set() or not any(j["definition"] == "marker" for j in client.jobs.values()):
            problems.append(f"{client.name}: never reached the end of the run")
        last_job = list(finals)[-1]
        if last_job not in client.jobs:
            problems.append(f"{client.name}: does not know the last job {last_job}")
        for job_id, job in client.jobs.items():
            if job_id in finals:
                compared += 1
                # the all-jobs stream carries job summaries: everything but the params
                final = {k: v for k, v in finals[job_id].items() if k != "params"}
                job = {k: v for k, v in job.items() if k != "params"}
                if job != final:
                    problems.append(f"{client.name}: folded state of {job_id} differs from its final snapshot: "
                                    f"{_diff(job, final)}")
    for client in clients:
        for segment in client.segments:
            for ref in reference.segments:
                low, high = max(segment.base, ref.base), min(segment.last, ref.last)
                if low >= high:
                    continue
                ours = [s for s in segment.never_merged if low < s <= high]
                theirs = [s for s in ref.never_merged if low < s <= high]
                if ours != theirs:
                    missing = sorted(set(theirs) - set(ours))[:5]
                    extra = sorted(set(ours) - set(theirs))[:5]
                    problems.append(f"{client.name}: seqs {low}..{high} (from {segment.base}): missing {missing}, "
                                    f"extra {extra}")
    resumes = {k: sum(c.resumes[k] for c in clients) for k in ("replay", "snapshot")}
    return {"clients": len(clients) + 1, "jobs": len(finals), "states_compared": compared,
            "events": sum(c.events for c in [reference, *clients]), "resumes": resumes,
            "reference_snapshots": len(reference.segments), "problems": problems}


def _diff(ours: dict, final: dict) -> str:
    keys = [k for k in final if ours.get(k) != final[k]]
    return ", ".join(f"{k}: {ours.get(k)!r} != {final[k]!r}" for k in keys[:3])


def run_clients(url: str, count: int, seconds: float, rng: random.Random, period: float = 3.0,
                pause: float = 4.0, drive_done: threading.Event | None = None,
                registry: list | None = None) -> tuple[SoakClient, list[SoakClient], int]:
    """Start a reference client and `count - 1` disconnecting ones (listed in `registry` too);
    returns once all finished."""
    deadline = time.monotonic() + seconds + 120
    reference = SoakClient(url, "reference", deadline)
    clients = [SoakClient(url, f"client-{i}", deadline) for i in range(1, count)]
    if registry is not None:
        registry += [reference, *clients]
    for client in [reference, *clients]:
        client.start()
    stop = threading.Event()
    rounds = threading.Thread(target=lambda: setattr(stop, "caused", disconnect_rounds(
        clients, stop, period, pause, rng)), daemon=True)
    rounds.start()
    if drive_done is not None:
        drive_done.wait(seconds + 120)
    stop.set()
    for client in [reference, *clients]:
        client.join(max(1.0, deadline - time.monotonic()))
    rounds.join(period + 1)
    return reference, clients, getattr(stop, "caused", 0)


# ---------------------------------------------------------------- the benchmark mode


def _serve(seconds: float) -> None:
    """The server process of the benchmark: uvicorn + the driver; reports on stdout."""
    from stepstream.server import create_app

    orch = soak_orchestrator()
    common.start_server(create_app(orch))
    sys.stdin.readline()  # "go": the clients are connected
    finals, marker = drive(orch, seconds)
    print(json.dumps({"finals": finals, "marker": marker}), flush=True)
    sys.stdin.readline()
    common.exit_server(orch)


def soak(seconds: float = 60, clients: int = 100, seed: int = 1, log=print) -> dict:
    """The benchmark: server in a subprocess, `clients` streams here; memory via psutil."""
    with common.ServerProcess("soak.py", "--serve", "--seconds", str(seconds)) as server:
        samples: list[tuple[float, int, int]] = []
        health = httpx.Client(base_url=server.url, timeout=10)

        def measure() -> None:
            # Warm: the ring turned over, and at a quarter of the run >= 4 jobs (~1 s each) ended.
            seq, elapsed = health.get("/api/health").json()["seq"], time.monotonic() - start
            samples.append((elapsed, server.rss(), seq >= 2 * REPLAY_SIZE and elapsed >= seconds / 4))
        drive_done = threading.Event()
        answer: dict = {}

        def read_finals() -> None:
            try:
                answer.update(json.loads(server.line(seconds + 120)))
                measure()
            finally:  # the clients stop waiting for the driver either way
                drive_done.set()

        def sample() -> None:
            while not drive_done.wait(0.5):  # a measurement, bounded by the driver's end
                measure()

        start = time.monotonic()
        server.send("go")
        threading.Thread(target=read_finals, daemon=True).start()
        threading.Thread(target=sample, daemon=True).start()
        reference, streams, disconnects = run_clients(server.url, clients, seconds, random.Random(seed),
                                                      drive_done=drive_done)
        result = check(streams, reference, answer.get("finals", {}))
        result.update(memory_verdict(samples))
        for key in ("memory_settled", "memory_end", "memory_peak"):
            if key in result:
                result[key.replace("memory", "rss") + "_mb"] = result.pop(key) / 2**20
        result["disconnects"] = disconnects
        result["seconds"] = seconds
        return {"name": "soak", **result}


def memory_verdict(samples: list[tuple[float, int, bool]], tolerance: float = 0.10) -> dict:
    """Memory where it settled (the first (time, memory, warm) sample that is warm: the replay
    ring has filled and turned over and finished jobs are being evicted) vs at the end."""
    settled = next((mem for _, mem, warm in samples if warm), None)
    end = samples[-1][1] if samples else 0
    if settled is None:
        return {"memory_ok": False, "memory_note": "the run never warmed up"}
    growth = end / settled - 1
    return {"memory_settled": settled, "memory_end": end, "memory_growth": growth,
            "memory_peak": max(mem for _, mem, _ in samples), "memory_ok": growth <= tolerance}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.seconds)
        return
    result = soak(args.seconds, args.clients)
    problems = result.pop("problems")
    print(json.dumps(result, indent=1))
    for problem in problems[:20]:
        print("PROBLEM:", problem)
    ok = not problems and result["memory_ok"]
    print("soak:", "OK" if ok else f"FAILED ({len(problems)} problems, memory {result})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
