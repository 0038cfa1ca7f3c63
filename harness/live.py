"""A real uvicorn server on a free loopback port, in a thread, for stream and browser tests."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """Runs an ASGI app with uvicorn until `stop()`; `start()` again serves on the same port."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.app = app
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10) -> LiveServer:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                timeout_graceful_shutdown=1, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=f"uvicorn-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on port {self.port}")
            time.sleep(0.01)  # polling a flag uvicorn exposes no event for
        return self

    def stop(self, timeout: float = 10) -> None:
        if self._server is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)  # type: ignore[union-attr]
        if self._thread.is_alive():  # type: ignore[union-attr]
            self._server.force_exit = True
            self._thread.join(timeout)  # type: ignore[union-attr]
        self._server = None

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def sse_events(response: httpx.Response) -> Iterator[dict]:
    """Parse an SSE response as it streams: yields {"id", "event", "data", "retry"} dicts."""
    event: dict = {}
    for line in response.iter_lines():
        if line == "":
            if "data" in event:  # as in EventSource, a block without data dispatches nothing
                event["data"] = json.loads(event["data"])
                yield event
                event = {}
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data" and "data" in event:
                event["data"] += "\n" + value
            else:
                event[field] = value
