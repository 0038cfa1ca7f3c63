"""Calls that may block on storage, run off the server's event loop with a bound.

The server's event loop serves every page, stream and health check of the process: it must never
wait on SQLite or Redis. Every read or command that touches storage goes through `Offload.run`,
which runs it on a small pool of threads of its own and gives up waiting after a timeout (the
call itself may go on in its thread; a Redis call retries until Redis is back). While storage is
slow, the calls in flight show it (`stalled`), and a command is refused before it starts, so a
client is never left not knowing whether it was applied.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .model import StepstreamError

T = TypeVar("T")


class StorageUnavailable(StepstreamError):
    """Storage did not answer in time, or is known to be failing: answered as a 503 with
    `Retry-After`. `retry_after` is in seconds."""

    def __init__(self, message: str, retry_after: int = 2) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Offload:
    """A bounded pool of threads for storage calls, and what it knows of storage's health."""

    def __init__(self, *, threads: int = 16, timeout: float = 3.0, stall_after: float = 1.0) -> None:
        self.threads = threads
        self.timeout = timeout
        self.stall_after = stall_after
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="stepstream-storage")
        self._lock = threading.Lock()
        self._started: dict[int, float] = {}  # call number -> when it started (monotonic)
        self._numbers = itertools.count()

    def stalled(self) -> str | None:
        """Why storage looks stuck: the oldest call in flight has waited longer than
        `stall_after`; None while every call answers promptly."""
        with self._lock:
            oldest = min(self._started.values(), default=None)
        if oldest is None:
            return None
        waited = time.monotonic() - oldest
        if waited < self.stall_after:
            return None
        return f"storage has not answered for {waited:.1f} s"

    def _call(self, number: int, fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
        try:
            return fn(*args, **kwargs)
        finally:
            with self._lock:
                self._started.pop(number, None)

    async def run(self, fn: Callable[..., T], *args: Any, command: bool = False, timeout: float | None = None,
                  **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` on a storage thread. Raises `StorageUnavailable` when every
        thread is taken, when it takes longer than `timeout` (default `self.timeout`), or, for a
        `command` (a change), at once while storage is stalled: a change is either refused
        before it starts or answered."""
        if command:
            stalled = self.stalled()
            if stalled is not None:
                raise StorageUnavailable(f"{stalled}; nothing was changed, try again later")
        number = next(self._numbers)
        with self._lock:
            if len(self._started) >= self.threads:
                raise StorageUnavailable(f"storage is not keeping up: {len(self._started)} calls are waiting for it")
            self._started[number] = time.monotonic()
        try:
            future = self._executor.submit(self._call, number, fn, args, kwargs)
        except RuntimeError:  # shut down
            with self._lock:
                self._started.pop(number, None)
            raise StorageUnavailable("the server is shutting down") from None
        limit = self.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), limit)
        except TimeoutError:
            what = "the change may still be applied once it answers" if command else "try again later"
            raise StorageUnavailable(f"storage did not answer within {limit:g} s; {what}") from None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
