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
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def until(condition: Callable[[], Any], timeout: float = 30, what: str = "the condition", every: float = 0.02) -> Any:
    """Poll `condition()` until it is truthy; its value. There is no event to await across
    processes, so this is how a test waits on shared state; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        time.sleep(every)


class StderrLines:
    """A subprocess whose stderr (a text pipe) is read line by line as it comes, once
    `start_reading()` is called; `wait_for` waits on lines, never on a fixed sleep."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._pump = threading.Thread(target=self._read, daemon=True)

    def start_reading(self) -> None:
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

    def interrupt(self, timeout: float = 10) -> tuple[int, float]:
        """Ctrl+C: the exit status and the seconds it took to exit."""
        sent = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - sent

    def stderr(self) -> str:
        if self.proc.poll() is not None and self._pump.is_alive():
            self._pump.join(5)
        return "".join(self.lines)


class Served(StderrLines):
    """`stepstream serve ...` (or another `command`) in a subprocess, its stderr read line by line
    as it comes."""

    def __init__(self, *args: str, cwd: Path, command: str = "serve", **env: str) -> None:
        super().__init__(subprocess.Popen([sys.executable, "-m", "stepstream", command, *args], cwd=cwd,
                                          env=cli_env(**env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                          text=True))
        self.start_reading()

    def url(self) -> str:
        """The URL of the `serving on` line, once the server says it listens."""
        line = self.wait_for("serving on ")
        match = re.search(r"serving on (http://\S+)", line)
        assert match, line
        return match.group(1)

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def base_of(url: str) -> str:
    return url.split("?", 1)[0].rstrip("/")
