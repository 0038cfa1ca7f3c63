"""A real `redis-server` (the Debian package) on a free port with its own temp directory, with the
append-only file on, so it can be stopped and started again with everything it had.

Plain Python (no pytest): `tests/redisserver.py` wraps it to skip or fail when redis-server is
missing, `bench/redis.py` uses it as is.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

MISSING = "redis-server is not installed (apt-get install redis-server; scripts/test installs it)"


def redis_server_path() -> str | None:
    """The redis-server executable, or None when it is not installed."""
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """`redis-server` with AOF (`appendfsync always`) in a temp dir; `restart()` keeps its data.
    `durable=False`: no AOF (faster; a restart then starts empty)."""

    def __init__(self, executable: str | None = None, *, directory: Path | None = None,
                 durable: bool = True) -> None:
        self.durable = durable
        found = executable or redis_server_path()
        if found is None:
            raise RuntimeError(MISSING)
        self.executable = found
        self.port = free_port()
        self._own_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="stepstream-redis-"))
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start it and return once it answers PING (RuntimeError if it exits or takes over 20 s)."""
        self.proc = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--save", "", *(("--appendonly", "yes", "--appendfsync", "always") if self.durable else
                             ("--appendonly", "no")), "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.ping():
                    break
            except (redis.ConnectionError, redis.BusyLoadingError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)
        client.close()
        return self

    def client(self) -> redis.Redis:
        """A new redis-py client of this server."""
        return redis.Redis(port=self.port)

    def stop(self, kill: bool = False) -> None:
        """Stop it: SIGTERM (it flushes the AOF and exits), or SIGKILL with `kill`."""
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        self.proc.wait(30)
        self.proc = None

    def restart(self) -> None:
        """Stop it gracefully and start it again on the same port and directory."""
        self.stop()
        self.start()

    def memory_used(self) -> int:
        """INFO memory's used_memory, in bytes."""
        return int(self.client().info("memory")["used_memory"])

    def close(self) -> None:
        """Kill it and remove its directory if it made it."""
        self.stop(kill=True)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
