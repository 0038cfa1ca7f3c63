"""A real `redis-server` (the Debian package) on a free port with its own temp directory, with the
append-only file on, so it can be stopped and started again with everything it had."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis


def redis_server_path() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)


def require_redis_server() -> str:
    """The redis-server executable; skipped outside CI where it is missing, failed in CI."""
    path = redis_server_path()
    if path is None:
        message = "redis-server is not installed (apt-get install redis-server; scripts/test installs it)"
        if os.environ.get("CI") or os.environ.get("STEPSTREAM_REQUIRE_REDIS"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """`redis-server` with AOF (`appendfsync always`) in a temp dir; `restart()` keeps its data.
    `durable=False`: no AOF (faster; a restart then starts empty)."""

    def __init__(self, executable: str | None = None, *, directory: Path | None = None,
                 durable: bool = True) -> None:
        self.executable = executable or require_redis_server()
        self.durable = durable
        self.port = free_port()
        self._own_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="stepstream-redis-"))
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
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
        return redis.Redis(port=self.port)

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()  # SIGTERM: redis-server flushes the AOF and exits
        self.proc.wait(30)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def memory_used(self) -> int:
        return int(self.client().info("memory")["used_memory"])

    def close(self) -> None:
        self.stop(kill=True)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
