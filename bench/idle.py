"""What an idle `GET /api/events` connection holds in the server, and who holds it.

A server process (`create_app(orch)` under uvicorn, the code of this checkout or of `--root`)
gets 50 connections opened and closed (first-use costs), then `--clients` idle stream
connections, each read up to its snapshot. Its RSS before and after gives the RSS per
connection; with `--trace` the server runs under tracemalloc and the two snapshots' difference,
per connection, is split by the package of the innermost frame that belongs to one of
stepstream, sse-starlette, anyio, starlette or uvicorn (what tracemalloc sees: Python objects,
not the kernel's socket buffers; tracing itself inflates the RSS).

    python bench/idle.py [--clients 2000] [--trace] [--root CHECKOUT]
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import common

SERVER = r'''
import gc, json, os, sys, time, tracemalloc
root = sys.argv[1]
sys.path[:0] = [root, os.path.join(root, "bench")]
import common, psutil
from stepstream import Orchestrator
from stepstream.server import create_app

PACKAGES = ("stepstream", "sse_starlette", "anyio", "starlette", "uvicorn")


def owner(traceback):
    for frame in reversed(list(traceback)):
        parts = frame.filename.split(os.sep)
        for package in PACKAGES:
            if package in parts:
                return package + "/" + parts[-1]
    return "other"


orch = Orchestrator(max_workers=2, capture_level=None)
common.raise_open_files()
common.start_server(create_app(orch), 0, backlog=4096)
snapshots = []
for line in sys.stdin:
    if line.strip() != "measure":
        break
    gc.collect()
    time.sleep(0.3)
    if tracemalloc.is_tracing():
        snapshots.append(tracemalloc.take_snapshot())
    by_owner = {}
    if len(snapshots) == 2:
        for stat in snapshots[1].compare_to(snapshots[0], "traceback"):
            key = owner(stat.traceback)
            by_owner[key] = by_owner.get(key, 0) + stat.size_diff
    print(json.dumps({"rss": psutil.Process().memory_info().rss, "traced": by_owner}), flush=True)
os._exit(0)
'''


def _open(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
        socks.append(sock)
    for sock in socks:
        got = b""
        while b"event: snapshot" not in got:
            got += sock.recv(1 << 16)
    return socks


def idle(clients: int, trace: bool = False, root: str = common.ROOT) -> dict:
    common.raise_open_files()
    env = dict(os.environ, PYTHONPATH=os.path.abspath(root))
    if trace:
        env["PYTHONTRACEMALLOC"] = "12"
    proc = subprocess.Popen([sys.executable, "-c", SERVER, os.path.abspath(root)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        port = int(proc.stdout.readline().split()[1])  # type: ignore[union-attr]

        def measure() -> dict:
            proc.stdin.write("measure\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
            return json.loads(proc.stdout.readline())  # type: ignore[union-attr]

        for sock in _open(port, 50):
            sock.close()
        time.sleep(1)
        before = measure()
        socks = _open(port, clients)
        time.sleep(1)
        after = measure()
        for sock in socks:
            sock.close()
    finally:
        proc.kill()
        proc.wait()
    per_connection = (after["rss"] - before["rss"]) / clients
    result = {"root": root, "clients": clients, "rss_per_connection_kb": per_connection / 1024}
    if trace:
        traced = sorted(after["traced"].items(), key=lambda kv: -kv[1])
        result["traced_per_connection_b"] = sum(size for _, size in traced) / clients
        result["traced_by_owner_b"] = {key: round(size / clients) for key, size in traced if size / clients >= 100}
    return result


def main() -> None:
    parser = common.arguments(__doc__)
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--trace", action="store_true", help="tracemalloc's split by package (RSS is then inflated)")
    parser.add_argument("--root", default=common.ROOT, help="serve this checkout's stepstream instead")
    args = parser.parse_args()
    print(json.dumps(idle(args.clients, args.trace, args.root), indent=1))


if __name__ == "__main__":
    main()
