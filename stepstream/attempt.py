"""How one attempt runs, wherever it runs: a step's handler or a child's attempt, with its `ctx`.

Every runner (the local pool and event loop, the Redis worker loop) runs work through `Attempts`:
it begins a child (pending -> running), calls the user's code with a `JobContext`, and ends the
attempt whatever the code raised, returning the work that became runnable. Nothing here holds the
backend's lock while user code runs.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .jobs import Job
from .logbridge import current_job
from .text import describe

if TYPE_CHECKING:
    from .orchestrator import Orchestrator

INTERRUPTED = "interrupted: the orchestrator shut down while this ran"

Outcome = tuple[int, "str | None", "str | None"]  # attempt, error, traceback


class JobContext:
    """What a step handler or child receives as `ctx`."""

    __slots__ = ("_orch", "_job", "_params", "job_id", "manager_id", "step_id", "step_name", "attempt")

    def __init__(self, orch: Orchestrator, job: Job, attempt: int = 1) -> None:
        self._orch = orch
        self._job = job
        self._params: dict | None = None
        self.job_id: str = job.id
        self.manager_id: str = job.manager.id
        self.step_id: str = job.step.id
        self.step_name: str = job.step.name
        self.attempt = attempt

    @property
    def params(self) -> dict:
        """The job's params: this handler's own copy, made on first use."""
        if self._params is None:
            self._params = json.loads(self._job.manager.params_json)
        return self._params

    @property
    def orchestrator(self) -> Orchestrator:
        """The orchestrator running this job, e.g. to spawn agent style with `step_id=`."""
        return self._orch

    @property
    def cancelled(self) -> bool:
        """True once the manager job was cancelled: stop cooperatively."""
        return self._orch.store.cancelled(self._job)

    def spawn(self, fn: Callable[..., Any], *args: Any, retries: int = 0, **kwargs: Any) -> str:
        """Run `fn(ctx, *args, **kwargs)` as a child of this job (linked by `parent_id`)."""
        return self._orch.spawn(fn, *args, parent_id=self.job_id, retries=retries, **kwargs)

    def log(self, level: str, message: str) -> None:
        """Add a line to this job's log (levels: debug, info, warning, error)."""
        self._orch.store.log(self.job_id, level, message)


class Attempts:
    """Runs attempts of one orchestrator's work: `function(job)` finds the code to run."""

    def __init__(self, orch: Orchestrator, function: Callable[[Job], Callable[..., Any]]) -> None:
        self.orch = orch
        self.function = function

    @property
    def store(self) -> Any:
        return self.orch.store

    def begin(self, job: Job) -> int | None:
        """The attempt number about to run, or None if the child was cancelled meanwhile."""
        if job.kind != "child":
            return 1
        return job.attempt if self.store.begin_child(job) else None

    @staticmethod
    def arguments(job: Job) -> tuple[tuple, dict]:
        return (job.args, job.kwargs) if job.kind == "child" else ((), {})

    def call(self, job: Job, fn: Callable[..., Any]) -> Outcome | None:
        """Run a step's handler or a child's attempt on this thread: (attempt, error,
        traceback), or None if the child was cancelled before it began."""
        attempt = self.begin(job)
        if attempt is None:
            return None
        token = current_job.set(functools.partial(self.store.log, job.id))
        try:
            args, kwargs = self.arguments(job)
            fn(JobContext(self.orch, job, attempt), *args, **kwargs)
            error = traceback = None
        except BaseException as exc:  # noqa: BLE001 - SystemExit, KeyboardInterrupt: the attempt still ends
            error, traceback = describe(exc)
        finally:
            current_job.reset(token)
        return attempt, error, traceback

    async def call_async(self, job: Job, fn: Callable[..., Any]) -> Outcome | None:
        """The same for an `async def` function, on the running event loop."""
        attempt = self.begin(job)
        if attempt is None:
            return None
        current_job.set(functools.partial(self.store.log, job.id))  # each task has its own copy of the context
        try:
            args, kwargs = self.arguments(job)
            await fn(JobContext(self.orch, job, attempt), *args, **kwargs)
            error = traceback = None
        except asyncio.CancelledError:  # shutdown cancels what still runs: record it, then end
            error, traceback = INTERRUPTED, None
        except BaseException as exc:  # noqa: BLE001 - a SystemExit must not stop the loop thread
            error, traceback = describe(exc)
        return attempt, error, traceback

    def end(self, job: Job, attempt: int, error: str | None, traceback: str | None) -> list[Job]:
        """End the attempt in the backend; the work that became runnable (a retry, the next
        step's handler)."""
        if job.kind != "child":
            return self.store.handler_returned(job, error, traceback)
        return self.store.end_child(job, error, traceback, attempt)
