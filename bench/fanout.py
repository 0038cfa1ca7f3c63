"""Stream fan-out: delay from a change to each client's view, server CPU and RSS, at N clients.

The server (stepstream's app or the naive sse-starlette broadcast of bench/naive.py) runs in
its own process (bench/serve.py); the clients run here, in one asyncio process, on raw sockets.
A `load` job's children write `probe <time.time()>` log lines (log events are never merged); a
client's delay is its receive time minus that time (same machine clock). A probe a client
never received counts as an infinite delay, so it shows in p99. Server CPU per delivered event
(its CPU during a load phase over the events all clients received) does not depend on how many
clients there are: it is what each event costs the server to send.

Run alone: `python bench/fanout.py [--quick]`; `bench/run.py` runs it with the others.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time

import common
import psutil

SLA = 1.0  # seconds: a rate is sustainable while p99 delay stays under this


def load_phase(server: common.ServerProcess, rate: float, seconds: float) -> dict:
    """One `run` of bench/serve.py's load job; blocks until the server's job settled."""
    server.send(f"run {rate} {seconds}")
    words = server.line(seconds + 130).split()
    return {"job": words[1], "transitions": int(words[2]), "load_s": float(words[3]),
            "probes": int(words[4]), "wall_s": float(words[5])}


class Dechunker:
    """The body of a `Transfer-Encoding: chunked` response, from its bytes as they arrive."""

    def __init__(self) -> None:
        self.buf = b""
        self.need = 0  # bytes left in the current chunk; -2: expecting the CRLF after a chunk
        self.ended = False  # the last (empty) chunk arrived

    def feed(self, data: bytes) -> bytes:
        buf, pos, out = self.buf + data, 0, bytearray()
        while not self.ended:
            if self.need > 0:
                take = min(self.need, len(buf) - pos)
                out += buf[pos:pos + take]
                pos += take
                self.need -= take
                if self.need:
                    break
                self.need = -2
            if self.need == -2:
                if len(buf) - pos < 2:
                    break
                pos += 2
                self.need = 0
            end = buf.find(b"\r\n", pos)
            if end < 0:
                break
            self.need = int(buf[pos:end].split(b";")[0], 16)
            pos = end + 2
            self.ended = self.need == 0
        self.buf = buf[pos:]
        return bytes(out)


PROBE = re.compile(rb'"message": ?"probe ([0-9.]+)"')  # stepstream's JSON has no spaces, json.dumps' has
PHASE_DONE = re.compile(rb'"message": ?"phase-done"')


class StreamClient(asyncio.Protocol):
    """One `GET /api/events` connection: de-chunks, counts events, times probes. A protocol,
    not a stream reader and a task, and it scans each read once for probes rather than parsing
    every event: 2,000 of these in one process cost the machine's other core less."""

    def __init__(self) -> None:
        self.snapshot = asyncio.Event()
        self.phase_done = asyncio.Event()
        self.delays: list[float] = []
        self.events = 0
        self.bytes = 0
        self.transport: asyncio.Transport | None = None
        self.head: bytes | None = b""  # the response head until its blank line arrived
        self.body: Dechunker | None = None  # None: the body is not chunked
        self.tail = b""  # the start of an event whose end has not arrived yet

    async def connect(self, port: int) -> None:
        self.transport, _ = await asyncio.get_running_loop().create_connection(lambda: self, "127.0.0.1", port)
        self.transport.write(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")

    def reset(self) -> None:
        self.phase_done = asyncio.Event()
        self.delays = []

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if self.head is not None:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, data = self.head.split(b"\r\n\r\n", 1)
            self.body = Dechunker() if b"transfer-encoding: chunked" in head.lower() else None
            self.head = None
        out = self.body.feed(data) if self.body is not None else data
        if not out:
            return
        self.bytes += len(out)
        text = self.tail + out
        end = max(text.rfind(b"\n\n") + 2, text.rfind(b"\n\r\n") + 3)  # after the last whole event
        if end <= 2:
            self.tail = text
            return
        whole, self.tail = text[:end], text[end:]
        self.events += whole.count(b"\nevent: ")  # every event has an id line before its type
        self.delays.extend(now - float(m) for m in PROBE.findall(whole))
        if PHASE_DONE.search(whole):
            self.phase_done.set()
        if not self.snapshot.is_set() and b"event: snapshot" in whole:
            self.snapshot.set()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def _wait_all(events: list[asyncio.Event], timeout: float) -> bool:
    try:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), timeout)
        return True
    except TimeoutError:
        return False


async def measure(app: str, clients: int, rates: list[float], seconds: float, log=print,
                  server_args: tuple[str, ...] = (), root: str | None = None) -> dict:
    """Connect `clients` streams to a fresh `app` server, then one load phase per rate (ascending,
    stopping after the first rate whose p99 delay is over SLA). `root`: serve the code of that
    checkout (its bench/serve.py and stepstream/), e.g. a worktree of an earlier commit."""
    serve = os.path.join(os.path.abspath(root), "bench", "serve.py") if root else "serve.py"
    server = common.ServerProcess(serve, "--app", app, *server_args)
    me = psutil.Process()
    streams = [StreamClient() for _ in range(clients)]
    result: dict = {"app": app, "clients": clients, "points": []}
    try:
        await asyncio.sleep(0.3)  # let the fresh process finish importing before the baseline RSS
        rss_idle = server.rss()
        for i in range(0, clients, 50):  # connect in batches, not a SYN flood
            await asyncio.gather(*(s.connect(server.port) for s in streams[i:i + 50]))
        if not await _wait_all([s.snapshot for s in streams], 60):
            raise RuntimeError(f"{app}: not every client got its snapshot")
        await asyncio.sleep(0.5)
        result["rss_connected"] = server.rss()
        result["rss_per_connection"] = (result["rss_connected"] - rss_idle) / clients
        for rate in rates:
            for s in streams:
                s.reset()
            cpu0, mine0, t0 = server.cpu(), sum(me.cpu_times()[:2]), time.perf_counter()
            written0 = server.written()
            events0 = sum(s.events for s in streams)
            phase = await asyncio.to_thread(load_phase, server, rate, seconds)
            drained = await _wait_all([s.phase_done for s in streams], max(3.0, seconds))
            wall = time.perf_counter() - t0
            server_cpu_s = server.cpu() - cpu0
            delivered = sum(s.events for s in streams) - events0
            delays = [d for s in streams for d in s.delays]
            expected = phase["probes"] * clients
            missing = max(0, expected - len(delays))
            delays_all = delays + [float("inf")] * missing
            point = {
                "rate": rate,
                "achieved_rate": phase["transitions"] / phase["load_s"],
                "p50_ms": common.percentile(delays_all, 0.50) * 1e3,
                "p99_ms": common.percentile(delays_all, 0.99) * 1e3,
                "max_ms": max(delays_all, default=float("inf")) * 1e3,
                "probes_missing": missing,
                "server_cpu_pct": 100 * (server.cpu() - cpu0) / wall,
                "client_cpu_pct": 100 * (sum(me.cpu_times()[:2]) - mine0) / wall,
                "server_rss_mb": server.rss() / 2**20,
                "server_written_mb_per_s": (server.written() - written0) / wall / 2**20,
                "events_per_s": delivered / wall,
                # what the server spends per event a client got, whatever the number of clients
                "server_cpu_us_per_event": server_cpu_s / max(delivered, 1) * 1e6,
                "drained": drained,
            }
            result["points"].append(point)
            log(f"  {root or app:10} {clients:4d} clients {rate:7.0f}/s (got {point['achieved_rate']:7.0f}/s): "
                f"p50 {point['p50_ms']:8.1f} ms  p99 {point['p99_ms']:8.1f} ms  "
                f"cpu {point['server_cpu_pct']:4.0f}% (clients {point['client_cpu_pct']:3.0f}%)  "
                f"rss {point['server_rss_mb']:6.1f} MB  {point['events_per_s']:8.0f} events/s  "
                f"{point['server_cpu_us_per_event']:5.1f} µs cpu/event  "
                f"{result['rss_per_connection'] / 1024:5.1f} KB/idle conn"
                + ("" if drained else "  (not drained)"))
            if point["p99_ms"] >= SLA * 1e3:
                break
    finally:
        for s in streams:
            s.close()
        server.close()
    ok = [p["rate"] for p in result["points"] if p["p99_ms"] < SLA * 1e3]
    result["max_sustainable_rate"] = max(ok, default=0)
    result["max_rate_is_lower_bound"] = bool(ok) and ok[-1] == rates[-1]
    return result


PLANS = {
    # app -> clients -> ladder of rates (transitions/s)
    "full": {
        "stepstream": {10: [1000, 5000, 10000], 100: [1000, 5000, 10000],
                       500: [1000, 2500, 5000, 10000, 20000], 2000: [250, 1000]},
        "naive": {10: [1000, 5000, 10000], 100: [1000, 5000, 10000],
                  500: [50, 100, 250, 500, 1000, 2500, 5000, 10000, 20000], 2000: [50, 250, 1000]},
    },
    "quick": {
        "stepstream": {500: [1000, 5000]},
        "naive": {500: [100, 250, 1000, 5000]},
    },
}


def fanout(quick: bool = False, seconds: float | None = None, log=print) -> dict:
    """All points of the plan, stepstream and naive; ratios of the highest sustainable rates."""
    common.raise_open_files()
    plan = PLANS["quick" if quick else "full"]
    seconds = seconds or (1.5 if quick else 5.0)
    runs = {app: [asyncio.run(measure(app, n, rates, seconds, log)) for n, rates in ladder.items()]
            for app, ladder in plan.items()}
    by_clients = {}
    for ours in runs["stepstream"]:
        theirs = next(r for r in runs["naive"] if r["clients"] == ours["clients"])
        by_clients[ours["clients"]] = {
            "max_rate": ours["max_sustainable_rate"], "baseline_max_rate": theirs["max_sustainable_rate"],
            "max_rate_ratio": ours["max_sustainable_rate"] / max(theirs["max_sustainable_rate"], 1),
            "rss_per_connection_kb": ours["rss_per_connection"] / 1024,
            "baseline_rss_per_connection_kb": theirs["rss_per_connection"] / 1024,
        }
    return {"name": "fanout", "seconds_per_point": seconds, "sla_ms": SLA * 1e3, "runs": runs,
            "summary": by_clients}


def main() -> None:
    parser = common.arguments(__doc__)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--clients", type=int, help="one point only: this many clients, at --rate")
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--app", choices=("stepstream", "naive", "both"), default="both", help="with --clients")
    parser.add_argument("--against", metavar="ROOT", help="with --clients: also serve the checkout at ROOT "
                        "(e.g. `git worktree add --detach /tmp/before COMMIT`), in turn with this one")
    parser.add_argument("--rounds", type=int, default=1, help="with --clients: this many rounds")
    args = parser.parse_args()
    if args.clients:
        common.raise_open_files()
        apps = ("stepstream", "naive") if args.app == "both" else (args.app,)
        for _ in range(args.rounds):
            for root in ((args.against, None) if args.against else (None,)):
                for app in apps:
                    print("loadavg", open("/proc/loadavg").read().split()[:3], flush=True)
                    asyncio.run(measure(app, args.clients, [args.rate], args.seconds or 10, root=root))
        return
    print(json.dumps(fanout(args.quick, args.seconds)["summary"], indent=1))


if __name__ == "__main__":
    main()
