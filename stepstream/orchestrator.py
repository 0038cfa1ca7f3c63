"""Definitions, running steps, children on executors, cancel and wait.

Plain `def` handlers and children run on a thread pool; `async def` ones on one event-loop
thread owned by the orchestrator. Nothing here holds the store's lock while user code runs: a
worker calls into the store before and after the user's function, and the store answers with
what to run next (a retry, the next step's handler).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .logs import current_job, install_logging_bridge
from .model import NotFound, StepstreamError
from .state import Job, Store


@dataclass(frozen=True)
class Step:
    """One step of a job definition: `handler(ctx)` runs once when the step starts."""

    name: str
    handler: Callable[..., Any]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"a step name must be a non-empty string, not {self.name!r}")
        if not callable(self.handler):
            raise TypeError(f"step {self.name!r}: handler must be callable")


class JobContext:
    """What a step handler or child receives as `ctx`."""

    __slots__ = ("_orch", "_job", "job_id", "manager_id", "step_id", "step_name", "params", "attempt")

    def __init__(self, orch: Orchestrator, job: Job) -> None:
        self._orch = orch
        self._job = job
        self.job_id: str = job.id
        self.manager_id: str = job.manager.id
        self.step_id: str = job.step.id
        self.step_name: str = job.step.name
        self.params: dict = job.manager.params
        self.attempt: int = getattr(job, "attempt", 1)

    @property
    def orchestrator(self) -> Orchestrator:
        """The orchestrator running this job, e.g. to spawn agent style with `step_id=`."""
        return self._orch

    @property
    def cancelled(self) -> bool:
        """True once the manager job was cancelled: stop cooperatively."""
        return self._job.manager.cancelled

    def spawn(self, fn: Callable[..., Any], *args: Any, retries: int = 0, **kwargs: Any) -> str:
        """Run `fn(ctx, *args, **kwargs)` as a child of this job (linked by `parent_id`)."""
        return self._orch.spawn(fn, *args, parent_id=self.job_id, retries=retries, **kwargs)

    def log(self, level: str, message: str) -> None:
        """Add a line to this job's log (levels: debug, info, warning, error)."""
        self._orch.store.log(self.job_id, level, message)


async def _cancel_tasks() -> None:
    """Cancel every other task on the running loop and let them end."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Orchestrator:
    """Runs manager jobs of registered definitions; all state lives in `self.store`."""

    def __init__(
        self,
        max_workers: int = 8,
        *,
        replay_size: int = 100_000,
        max_finished: int = 1000,
        max_logs_per_step: int = 20_000,
        capture_level: int | None = logging.INFO,
    ) -> None:
        if not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be a positive int, not {max_workers!r}")
        self.store = Store(
            replay_size=replay_size, max_finished=max_finished, max_logs_per_step=max_logs_per_step
        )
        self.max_workers = max_workers
        self._definitions: dict[str, list[Step]] = {}
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="stepstream-worker")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()
        self.closed = threading.Event()  # set by shutdown()
        install_logging_bridge(capture_level)

    # ------------------------------------------------------------------ definitions

    def define(self, name: str, steps: list[Step]) -> None:
        """Register a job definition: ordered steps with unique names."""
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"a definition name must be a non-empty string, not {name!r}")
        steps = list(steps)
        if not steps or not all(isinstance(s, Step) for s in steps):
            raise ValueError(f"definition {name!r} needs one or more Step objects")
        names = [s.name for s in steps]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"definition {name!r} repeats step names: {', '.join(duplicates)}")
        if name in self._definitions:
            raise ValueError(f"definition {name!r} is already defined")
        self._definitions[name] = steps

    def definitions(self) -> dict[str, list[str]]:
        """Definition names and their step names, in order."""
        return {name: [s.name for s in steps] for name, steps in self._definitions.items()}

    # ------------------------------------------------------------------ commands

    def start(self, definition: str, params: dict | None = None) -> str:
        """Start a manager job of `definition`; returns its id."""
        if self.closed.is_set():
            raise StepstreamError("the orchestrator is shut down")
        steps = self._definitions.get(definition)
        if steps is None:
            raise NotFound(f"no definition named {definition!r}; known: {', '.join(self._definitions) or 'none'}")
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise ValueError(f"params must be a dict, not {type(params).__name__}")
        try:
            params = json.loads(json.dumps(params))  # a private copy that the API can show
        except (TypeError, ValueError) as exc:
            raise ValueError(f"params must be JSON-serialisable: {exc}") from None
        manager, first = self.store.create_manager(definition, [s.name for s in steps], params)
        self._start_handler(first)
        return manager.id

    def spawn(
        self,
        fn: Callable[..., Any],
        *args: Any,
        step_id: str | None = None,
        parent_id: str | None = None,
        retries: int = 0,
        **kwargs: Any,
    ) -> str:
        """Add a child running `fn(ctx, *args, **kwargs)` to a running step, linked by `step_id`
        (agent style) or by `parent_id` (the step or any job inside it; crawler style)."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {fn!r}")
        if self.closed.is_set():
            raise StepstreamError("the orchestrator is shut down")
        child = self.store.add_child(fn, args, kwargs, retries, step_id=step_id, parent_id=parent_id)
        self._submit(fn, child)
        return child.id

    def cancel(self, job_id: str) -> dict:
        """Cancel a running manager job; returns its snapshot."""
        self.store.cancel(job_id)
        return self.store.snapshot(job_id)

    # ------------------------------------------------------------------ reads

    def snapshot(self, job_id: str) -> dict:
        """`{"seq": int, "job": {...}}`, the same JSON as `GET /api/jobs/{id}`."""
        return self.store.snapshot(job_id)

    def wait(self, job_id: str, timeout: float | None = None) -> dict:
        """Block until the job has finished; its final snapshot. Raises TimeoutError."""
        return self.store.wait(job_id, timeout)

    def logs(self, job_id: str, **query: Any) -> dict:
        """Log lines of a job: `step=`, `level=`, `after=`, `limit=` as in the HTTP API."""
        return self.store.logs(job_id, **query)

    # ------------------------------------------------------------------ running

    def _submit(self, fn: Callable[..., Any], job: Job) -> None:
        """Run a step's handler or a child's attempt on the pool or the event loop."""
        if inspect.iscoroutinefunction(fn):
            asyncio.run_coroutine_threadsafe(self._run_async(job, fn), self._event_loop())
        else:
            self._pool.submit(self._run_sync, job, fn)

    def _start_handler(self, step: Job | None) -> None:
        while step is not None:
            handler = self._definitions[step.manager.definition][step.index].handler
            try:
                self._submit(handler, step)
                return
            except RuntimeError as exc:  # pool shut down: the step cannot run
                step = self.store.handler_returned(step, _describe(exc))

    def _run_sync(self, job: Job, fn: Callable[..., Any]) -> None:
        if job.kind == "child" and not self.store.begin_child(job):
            return  # cancelled before a worker took it
        token = current_job.set((self.store, job.id))
        try:
            args, kwargs = self._arguments(job)
            fn(JobContext(self, job), *args, **kwargs)
            error = None
        except Exception as exc:
            error = _describe(exc)
        finally:
            current_job.reset(token)
        self._finished(job, error)

    async def _run_async(self, job: Job, fn: Callable[..., Any]) -> None:
        if job.kind == "child" and not self.store.begin_child(job):
            return
        current_job.set((self.store, job.id))  # each task runs in its own copy of the context
        try:
            args, kwargs = self._arguments(job)
            await fn(JobContext(self, job), *args, **kwargs)
            error = None
        except asyncio.CancelledError:  # shutdown cancels what still runs: record it, then end
            error = "CancelledError: the orchestrator shut down"
        except Exception as exc:
            error = _describe(exc)
        self._finished(job, error)

    @staticmethod
    def _arguments(job: Job) -> tuple[tuple, dict]:
        return (job.args, job.kwargs) if job.kind == "child" else ((), {})

    def _finished(self, job: Job, error: str | None) -> None:
        if job.kind != "child":
            self._start_handler(self.store.handler_returned(job, error))
            return
        retry, next_step = self.store.end_child(job, error)
        if retry:
            self._submit(job.fn, job)
        self._start_handler(next_step)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="stepstream-async", daemon=True)
                thread.start()
                self._loop = loop
            return self._loop

    def shutdown(self, wait: bool = True) -> None:
        """Cancel running manager jobs, stop taking work and (with `wait`) let running code
        return. Idempotent."""
        if self.closed.is_set():
            return
        self.closed.set()
        for manager_id in self.store.running_managers():
            try:
                self.store.cancel(manager_id)
            except StepstreamError:
                pass  # finished meanwhile
        self._pool.shutdown(wait=wait)
        loop = self._loop
        if loop is not None:
            drained = asyncio.run_coroutine_threadsafe(_cancel_tasks(), loop)
            drained.add_done_callback(lambda _: loop.call_soon_threadsafe(loop.stop))
            if wait:
                drained.result(timeout=10)

    def __enter__(self) -> Orchestrator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
