"""Calls that may block on storage, run off the server's event loop with a bound.

The server's event loop serves every page, stream and health check of the process: it must never
wait on SQLite or Redis. Every read or command that touches storage goes through `Offload.run`,
which runs it on a small pool of threads of its own and gives up waiting after a timeout (the
call itself may go on in its thread; a Redis call retries until Redis is back). Whether storage
answers at all is told by one probe at a time (`StorageProbe`: a Redis PING), so a command is
refused before it starts while storage does not answer, and a client is never left not knowing
whether it was applied.
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
from .text import describe

T = TypeVar("T")


class StorageUnavailable(StepstreamError):
    """Storage did not answer in time, or is known to be failing: answered as a 503 with
    `Retry-After`. `retry_after` is in seconds."""

    def __init__(self, message: str, retry_after: int = 2) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Offload:
    """A bounded pool of threads for storage calls, and what it knows of storage's health. Calls
    beyond the threads wait their turn (a burst of streams starting, each reading its snapshot,
    must not turn away a command), up to `queue` of them, within their timeout."""

    def __init__(self, *, threads: int = 16, timeout: float = 3.0, queue: int = 128) -> None:
        self.threads = threads
        self.timeout = timeout
        self.queue = queue
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="stepstream-storage")
        self._lock = threading.Lock()
        self._started: dict[int, float] = {}  # call number -> when it started (monotonic)
        self._numbers = itertools.count()

    def _call(self, number: int, fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
        try:
            return fn(*args, **kwargs)
        finally:
            with self._lock:
                self._started.pop(number, None)

    async def run(self, fn: Callable[..., T], *args: Any, command: bool = False, timeout: float | None = None,
                  **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` on a storage thread. Raises `StorageUnavailable` when `queue`
        calls wait already, or when it takes longer than `timeout` (default `self.timeout`) with
        its wait for a thread: a call that never started is dropped and says so; for a `command`
        (a change) that had started, the message says it may still be applied."""
        number = next(self._numbers)
        with self._lock:
            if len(self._started) >= self.queue:
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
            if future.cancelled():  # still waiting for a thread: it will never run
                with self._lock:
                    self._started.pop(number, None)
                what = "nothing was done; try again later" if command else "try again later"
                raise StorageUnavailable(f"storage is busy: no thread for this within {limit:g} s; {what}") from None
            what = "the change may still be applied once it answers" if command else "try again later"
            raise StorageUnavailable(f"storage did not answer within {limit:g} s; {what}") from None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class StorageProbe:
    """Whether storage answers, asked with `check()` (a Redis PING, say) on a thread of its own,
    one probe at a time: many health checks and commands share one probe, a storage that does
    not answer holds that one thread, and a probe never waits behind the offload's queue (a
    burst of reads is not storage failing). A check that never blocks (`blocks=False`: it reads
    memory) is called on the event loop: a thread's round trip on a busy machine could take
    longer than `wait` and report a healthy storage as failing."""

    def __init__(self, check: Callable[[], str | None], *, blocks: Callable[[], bool] = lambda: True,
                 wait: float = 0.5, fresh: float = 0.5) -> None:
        self.offload = Offload(threads=1, queue=1, timeout=60.0)  # the probe's own thread
        self.check = check
        self.blocks = blocks  # asked at each probe: the storage may be chosen after the app is made
        self.wait = wait  # how long a caller waits for a probe's answer
        self.fresh = fresh  # an answer younger than this is taken as it is
        self._task: asyncio.Task | None = None
        self._started = 0.0
        self._answer: str | None = None
        self._answered = float("-inf")

    def _checked(self) -> str | None:
        """What the check says; a check that raises says why storage fails."""
        try:
            return self.check()
        except Exception as exc:  # noqa: BLE001 - any error of the storage's client
            return describe(exc)[0]

    async def _probe(self) -> str | None:
        try:
            answer = await self.offload.run(self._checked, timeout=60.0)
        except StorageUnavailable as exc:
            answer = str(exc)
        self._answer, self._answered = answer, time.monotonic()
        return answer

    async def problem(self) -> str | None:
        """Why storage cannot be used now, or None; within `wait` seconds whatever storage does."""
        if not self.blocks():
            return self._checked()
        now = time.monotonic()
        if now - self._answered < self.fresh and (self._task is None or self._task.done()):
            return self._answer
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._probe())
            self._started = now
        try:
            return await asyncio.wait_for(asyncio.shield(self._task), max(0.0, self._started + self.wait - now))
        except TimeoutError:
            return f"storage has not answered for {time.monotonic() - self._started:.1f} s"
