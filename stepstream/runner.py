"""Runners: where work runs. `LocalRunner` runs it in this process, as soon as it is made.

Plain `def` handlers and children run on a pool of daemon threads; `async def` ones on one
event-loop thread of the runner's own. When an attempt ends, the backend answers with the work
that became runnable (a retry, the next step's handler), which runs the same way. The Redis
deployment has a runner of its own (`backends/redis/worker.py`): its work comes from a shared queue.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable
from typing import Any, Protocol

from .attempt import Attempts
from .jobs import Job
from .text import describe
from .workers import WorkerPool


class Runner(Protocol):
    """What the orchestrator needs of a runner."""

    def submit(self, jobs: list[Job]) -> None:
        """Run these step handlers and child attempts (work the backend said is runnable)."""

    def workers(self) -> dict | None:
        """`{"size", "busy", "scope"}`: how many worker threads there are and how many run work
        now, from memory (no storage call); `scope` says whose: `deployment` (every worker there
        is) or `process` (only this process's: others may run work too). None when unknown."""

    def shutdown(self, wait: bool, abandon: Callable[[], None]) -> None:
        """Stop taking work. With `wait`, let running code return; `abandon()` settles what the
        runner lets go of, between stopping its threads and stopping its event loop."""


async def _cancel_tasks() -> None:
    """Cancel every other task on the running loop and let them end."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class EventLoopThread:
    """One event loop on a daemon thread, started on first use, for `async def` code."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def get(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="stepstream-async", daemon=True)
                thread.start()
                self._loop = loop
            return self._loop

    def run(self, coroutine: Any) -> Any:
        """Schedule `coroutine` on the loop; its concurrent future."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.get())

    def stop(self, wait: bool) -> None:
        """Cancel what still runs on the loop, then stop it."""
        loop = self._loop
        if loop is None:
            return
        drained = asyncio.run_coroutine_threadsafe(_cancel_tasks(), loop)
        drained.add_done_callback(lambda _: loop.call_soon_threadsafe(loop.stop))
        if wait:
            drained.result(timeout=10)


class LocalRunner:
    """Runs work in this process: a pool of `max_workers` daemon threads and an event loop."""

    def __init__(self, attempts: Attempts, max_workers: int) -> None:
        self.attempts = attempts
        self.pool = WorkerPool(max_workers)
        self.loop = EventLoopThread()

    def submit(self, jobs: list[Job]) -> None:
        for job in jobs:
            self._start(job)

    def workers(self) -> dict:
        """The pool's threads: every worker there is (`async def` code runs on the event loop,
        beside them, and never waits for one)."""
        return {"size": self.pool.size, "busy": self.pool.busy(), "scope": "deployment"}

    def _start(self, job: Job) -> None:
        """Run `job` on the pool or the loop; a job that cannot start any more (the runner is
        shut down) ends at once, and so does what that makes runnable."""
        pending = [job]
        while pending:
            job = pending.pop(0)
            fn = self.attempts.function(job)
            try:
                if inspect.iscoroutinefunction(fn):
                    self.loop.run(self._run_async(job, fn))
                else:
                    self.pool.submit(self._run_sync, job, fn)
            except RuntimeError as exc:  # shut down: the step cannot run (a child's cancel settled it)
                if job.kind != "child":
                    pending += self.attempts.store.handler_returned(job, *describe(exc))

    def _run_sync(self, job: Job, fn: Callable[..., Any]) -> None:
        outcome = self.attempts.call(job, fn)
        if outcome is not None:
            self.submit(self.attempts.end(job, *outcome))

    async def _run_async(self, job: Job, fn: Callable[..., Any]) -> None:
        outcome = await self.attempts.call_async(job, fn)
        if outcome is not None:
            self.submit(self.attempts.end(job, *outcome))

    def shutdown(self, wait: bool, abandon: Callable[[], None]) -> None:
        self.pool.shutdown(wait=wait)
        abandon()
        self.loop.stop(wait)
