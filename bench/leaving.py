"""Clients that stop reading and then leave: how long `/api/health` takes meanwhile.

60 clients open `GET /api/events?children=1` and never read; a job writes 100,000 log lines
(`--quick`: 20,000); then the 60 disconnect. `/api/health` is asked every 20 ms throughout, and
its answer times are reported for the job's run and for the time after the clients left, with
the server in memory and on SQLite. A server whose event loop re-encodes the backlog of every
client that left, in one go, shows it here (it took tens of seconds to answer).

    python bench/leaving.py [--quick]
"""

from __future__ import annotations

import os
import socket
import tempfile
import textwrap
import threading
import time

import common
import httpx

from harness.processes import Served, base_of

APP = textwrap.dedent('''
    from stepstream import Orchestrator, Step

    orch = Orchestrator(max_workers=2)


    def chatter(ctx):
        for n in range(ctx.params["lines"]):
            ctx.log("info", f"line {n} " + "x" * 40)


    orch.define("chatter", [Step("chatter", chatter)])
''')


def _silent(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET /api/events?children=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    return sock


def _probe(base: str, phase: list[list[float]], stop: threading.Event) -> None:
    """Ask `/api/health` every 20 ms until `stop`; each answer's time goes to `phase[0]`."""
    while not stop.is_set():
        started = time.monotonic()
        httpx.get(f"{base}/api/health", timeout=120)
        phase[0].append(time.monotonic() - started)
        time.sleep(0.02)


def _figures(seconds: list[float]) -> dict:
    ms = sorted(s * 1000 for s in seconds)
    return {"n": len(ms), "p50_ms": common.percentile(ms, 0.5), "p99_ms": common.percentile(ms, 0.99),
            "max_ms": ms[-1] if ms else float("nan")}


def leaving_clients(lines: int = 100_000, clients: int = 60) -> dict:
    results = {}
    for storage in ("memory", "sqlite"):
        with tempfile.TemporaryDirectory() as folder:
            with open(os.path.join(folder, "leaving_app.py"), "w") as f:
                f.write(APP)
            args = ["--memory"] if storage == "memory" else ["--db", os.path.join(folder, "jobs.db")]
            with Served("leaving_app:orch", *args, "--port", "0", cwd=folder) as served:  # type: ignore[arg-type]
                base = base_of(served.url())
                port = int(base.rsplit(":", 1)[1])
                sockets = [_silent(port) for _ in range(clients)]
                while httpx.get(f"{base}/api/health").json()["streams"] < clients:
                    time.sleep(0.05)
                during: list[float] = []
                after: list[float] = []
                phase = [during]
                stop = threading.Event()

                prober = threading.Thread(target=_probe, args=(base, phase, stop), daemon=True)
                prober.start()
                job = httpx.post(f"{base}/api/jobs", json={"definition": "chatter", "params": {"lines": lines}},
                                 timeout=60).json()["job"]["id"]
                while httpx.get(f"{base}/api/jobs/{job}", timeout=120).json()["job"]["status"] == "running":
                    time.sleep(0.05)
                phase[0] = after
                left = time.monotonic()
                for sock in sockets:
                    sock.close()
                while httpx.get(f"{base}/api/health", timeout=120).json()["streams"] > 0:
                    time.sleep(0.05)
                gone_s = time.monotonic() - left
                time.sleep(2.0)  # the two seconds after: the server must answer promptly throughout
                stop.set()
                prober.join(130)
                results[storage] = {"during_job": _figures(during), "after_leaving": _figures(after),
                                    "streams_gone_s": gone_s}
    return {"name": "leaving_clients", "lines": lines, "clients": clients, "results": results}


if __name__ == "__main__":
    args = common.arguments(__doc__).parse_args()
    out = leaving_clients(20_000 if args.quick else 100_000)
    for storage, r in out["results"].items():
        d, a = r["during_job"], r["after_leaving"]
        print(f"{storage}: health during the job p50/p99/max {d['p50_ms']:.0f}/{d['p99_ms']:.0f}/{d['max_ms']:.0f} ms "
              f"({d['n']}); after {out['clients']} clients left {a['p50_ms']:.0f}/{a['p99_ms']:.0f}/"
              f"{a['max_ms']:.0f} ms ({a['n']}); their streams let go in {r['streams_gone_s']:.2f} s")
