"""`python -m stepstream ...` in subprocesses, as a user runs it: its environment, and a server
whose stderr is read line by line as it comes (waits are on lines, never fixed sleeps)."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("STEPSTREAM_TOKEN", "COLUMNS")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def stepstream_cli(*args: str, cwd: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stepstream", *args], cwd=cwd, env=cli_env(**env),
                          capture_output=True, text=True, timeout=timeout)


class Served:
    """`stepstream serve ...` (or another `command`) in a subprocess, its stderr read line by line
    as it comes."""

    def __init__(self, *args: str, cwd: Path, command: str = "serve", **env: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "stepstream", command, *args], cwd=cwd,
                                     env=cli_env(**env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float = 30) -> str:
        """The first coming line of stderr that contains `text`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {text!r} on stderr within {timeout}s: {self.stderr()!r}") from None
            if line is None:
                raise AssertionError(f"exited ({self.proc.wait()}) before {text!r}: {self.stderr()!r}")
            if text in line:
                return line

    def url(self) -> str:
        """The URL of the `serving on` line, once the server says it listens."""
        line = self.wait_for("serving on ")
        match = re.search(r"serving on (http://\S+)", line)
        assert match, line
        return match.group(1)

    def interrupt(self, timeout: float = 10) -> tuple[int, float]:
        """Ctrl+C: the exit status and the seconds it took to exit."""
        sent = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - sent

    def stderr(self) -> str:
        if self.proc.poll() is not None:
            self._pump.join(5)
        return "".join(self.lines)

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def base_of(url: str) -> str:
    return url.split("?", 1)[0].rstrip("/")
