"""Definitions, running steps, children on executors, cancel and wait.

Plain `def` handlers and children run on a thread pool; `async def` ones on one event-loop
thread owned by the orchestrator. Nothing here holds the store's lock while user code runs: a
worker calls into the store before and after the user's function, and the store answers with
what to run next (a retry, the next step's handler).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import params as params_rules
from .callables import resolve
from .journal import Journal
from .journal.sqlite import SqliteJournal
from .logbridge import current_job, install_logging_bridge
from .model import InvalidParams, NotFound, StepstreamError
from .store import Job, Store
from .text import describe, safe_str
from .workers import WorkerPool

INTERRUPTED = "interrupted: the orchestrator shut down while this ran"
SHORT_CHILD = 0.01  # seconds: queued children this quick are taken and ended in batches (Redis)
CHILD_BATCH = 8  # at most this many at once

logger = logging.getLogger("stepstream")


def _missing(reason: str, ctx: Any, *args: Any, **kwargs: Any) -> None:
    """Stands in for code this worker cannot find: the attempt fails saying why."""
    raise LookupError(reason)


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


async def _cancel_tasks() -> None:
    """Cancel every other task on the running loop and let them end."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(frozen=True)
class Definition:
    """A registered job definition: its steps and the optional check of its params."""

    name: str
    steps: tuple[Step, ...]
    validate: Callable[[dict], Any] | None = None


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
        max_params_depth: int = params_rules.DEFAULT_MAX_DEPTH,
        max_params_bytes: int = params_rules.DEFAULT_MAX_BYTES,
        db: str | os.PathLike | None = None,
        journal: Journal | None = None,
        redis: str | None = None,
        visibility_timeout: float = 30.0,
    ) -> None:
        for name, value in (("max_workers", max_workers), ("max_params_depth", max_params_depth),
                            ("max_params_bytes", max_params_bytes)):
            least = 0 if name == "max_workers" and redis is not None else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an int of at least {least}, not {value!r}")
        if sum(x is not None for x in (db, journal, redis)) > 1:
            raise ValueError("give one of db= (a SQLite file), journal= or redis= (a Redis URL)")
        if db is not None:
            journal = SqliteJournal(db)
        self._store_settings = {"replay_size": replay_size, "max_finished": max_finished,
                                "max_logs_per_step": max_logs_per_step}
        self.store: Any = Store(**self._store_settings, journal=journal)
        self.max_workers = max_workers
        self.max_params_depth = max_params_depth
        self.max_params_bytes = max_params_bytes
        self._definitions: dict[str, Definition] = {}
        self._pool = WorkerPool(max_workers)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()
        self.closed = threading.Event()  # set by shutdown()
        self._consumer: threading.Thread | None = None
        self._capacity = threading.Condition()
        self._busy = 0  # queued work running here (Redis)
        self._short: dict[str, bool] = {}  # child function name: whether its last run here was short
        install_logging_bridge(capture_level)
        if redis is not None:
            self.use_redis(redis, visibility_timeout=visibility_timeout)

    @property
    def journal(self) -> Journal | None:
        """Where the history is kept; None: in memory only."""
        return self.store.journal

    @property
    def journal_error(self) -> str | None:
        """Why writing to the journal fails, while it does (changes then wait, unseen); None."""
        return self.store.journal_error

    @property
    def storage_error(self) -> str | None:
        """Why storage is failing now (writes to the journal, calls to Redis), or None. Never
        blocks: for a server's event loop."""
        return self.store.storage_error

    def check_storage(self) -> str | None:
        """Why storage cannot be used right now, or None. May block briefly (a Redis PING)."""
        return self.store.check_storage()

    def use_journal(self, journal: Journal) -> None:
        """Keep history in `journal` (e.g. `SqliteJournal(path)`) from now on: for a command line
        that chooses the storage of an orchestrator made elsewhere. Only before any job ran."""
        if self.store.seq or self.store.visible_seq or self.closed.is_set():
            raise StepstreamError("the storage can only be chosen before any job runs")
        old = self.store
        self.store = Store(**self._store_settings, journal=journal)
        old.close()

    def use_redis(self, url: str, *, workers: int | None = None, visibility_timeout: float = 30.0,
                  retain_jobs: int | None = None, retain_days: float | None = None,
                  prefix: str = "stepstream:") -> None:
        """Keep every job in the Redis at `url` (`redis://host:port/db`), shared by every process
        that uses it, and run `workers` threads of queued work here (default `max_workers`; 0:
        none). Only before any job ran here. Finished jobs beyond `retain_jobs` (default
        `max_finished`) or older than `retain_days` are let go."""
        from .redisbackend import RedisStore  # redis-py is needed only here

        if self.store.seq or self.store.visible_seq or self.closed.is_set():
            raise StepstreamError("the storage can only be chosen before any job runs")
        if workers is not None:
            if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
                raise ValueError(f"workers must be an int of at least 0, not {workers!r}")
            self.max_workers = workers
            self._pool = WorkerPool(max(workers, 1))
        old = self.store
        self.store = RedisStore(
            url, prefix=prefix, replay_size=self._store_settings["replay_size"],
            max_logs_per_step=self._store_settings["max_logs_per_step"],
            retain_jobs=retain_jobs if retain_jobs is not None or retain_days is not None
            else self._store_settings["max_finished"],
            retain_days=retain_days, visibility_timeout=visibility_timeout, max_args_bytes=self.max_params_bytes)
        old.close()
        if self.max_workers > 0:
            self._consumer = threading.Thread(target=self._consume, name="stepstream-redis-work", daemon=True)
            self._consumer.start()

    # ------------------------------------------------------------------ definitions

    def define(self, name: str, steps: list[Step], *, validate: Callable[[dict], Any] | None = None) -> None:
        """Register a job definition: ordered steps with unique names. `validate(params)`, if
        given, runs before a job is created and rejects bad params by raising ValueError (the
        HTTP API answers 422 with its message)."""
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
        if validate is not None and not callable(validate):
            raise TypeError(f"definition {name!r}: validate must be callable")
        self._definitions[name] = Definition(name, tuple(steps), validate)

    def definitions(self) -> dict[str, list[str]]:
        """Definition names and their step names, in order."""
        return {name: [s.name for s in d.steps] for name, d in self._definitions.items()}

    # ------------------------------------------------------------------ commands

    def start(self, definition: str, params: dict | None = None, *, rerun_of: str | None = None) -> str:
        """Start a manager job of `definition`; returns its id. Params must be strict JSON
        (see `stepstream.params`) and pass the definition's `validate`, else ValueError and
        nothing is created."""
        if self.closed.is_set():
            raise StepstreamError("the orchestrator is shut down")
        found = self._definitions.get(definition) if isinstance(definition, str) else None
        if found is None:
            raise NotFound(f"no definition named {definition!r}; known: {', '.join(self._definitions) or 'none'}")
        text = params_rules.validate(
            {} if params is None else params, max_depth=self.max_params_depth, max_bytes=self.max_params_bytes
        )
        if found.validate is not None:
            try:
                found.validate(json.loads(text))  # its own copy: a check cannot change the params
            except InvalidParams:
                raise
            except ValueError as exc:
                raise InvalidParams(f"params rejected by {definition!r}: {safe_str(exc)}") from None
        manager, first = self.store.create_manager(
            definition, [s.name for s in found.steps], json.loads(text), params_json=text, rerun_of=rerun_of
        )
        self._start_handler(first)
        self.store.wait_visible(self.store.seq)  # acknowledged means durable
        return manager.id

    def rerun(self, job_id: str) -> str:
        """Start a new job with the definition and params of manager job `job_id`; its id. The
        new job's `rerun_of` names the old one."""
        definition, params = self.store.definition_and_params(job_id)
        return self.start(definition, params, rerun_of=job_id)

    def delete(self, job_id: str) -> None:
        """Remove a finished manager job with everything in it. Conflict while it runs."""
        self.store.delete(job_id)
        self.store.wait_visible(self.store.seq)

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
        if not self.store.queued:
            self._submit(fn, child)
        return child.id

    def cancel(self, job_id: str) -> dict:
        """Cancel a running manager job; returns its snapshot."""
        self.store.cancel(job_id)
        snapshot = self.store.snapshot(job_id)
        self.store.wait_visible(snapshot["seq"])  # acknowledged means durable
        return snapshot

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

    def jobs(self, **query: Any) -> dict:
        """Manager jobs, newest first: `status=`, `definition=`, `q=` (id prefix), `limit=`,
        `cursor=` as in `GET /api/jobs`."""
        return self.store.list_managers(**query)

    def children(self, job_id: str, **query: Any) -> dict:
        """Children of a manager or step: `step=`, `status=`, `limit=`, `cursor=`."""
        return self.store.children(job_id, **query)

    def stats(self) -> dict:
        """`{"seq", "managers": {status: n}, "counters": {...}}`: what `GET /metrics` shows."""
        return self.store.stats()

    @property
    def seq(self) -> int:
        """The seq of the latest change."""
        return self.store.seq

    # ------------------------------------------------------------------ running

    def _submit(self, fn: Callable[..., Any], job: Job) -> None:
        """Run a step's handler or a child's attempt on the pool or the event loop."""
        if inspect.iscoroutinefunction(fn):
            asyncio.run_coroutine_threadsafe(self._run_async(job, fn), self._event_loop())
        else:
            self._pool.submit(self._run_sync, job, fn)

    def _start_handler(self, step: Job | None) -> None:
        while step is not None:
            handler = self._definitions[step.manager.definition].steps[step.index].handler
            try:
                self._submit(handler, step)
                return
            except RuntimeError as exc:  # pool shut down: the step cannot run
                step = self.store.handler_returned(step, *describe(exc))

    def _run_sync(self, job: Job, fn: Callable[..., Any]) -> None:
        outcome = self._call(job, fn)
        if outcome is not None:
            self._finished(job, *outcome)

    def _call(self, job: Job, fn: Callable[..., Any]) -> tuple[int, str | None, str | None] | None:
        """Run a step's handler or a child's attempt here: (attempt, error, traceback), or None
        if the child was cancelled before it began."""
        attempt = self._begin(job)
        if attempt is None:
            return None  # cancelled before a worker took it
        token = current_job.set(functools.partial(self.store.log, job.id))
        try:
            args, kwargs = self._arguments(job)
            fn(JobContext(self, job, attempt), *args, **kwargs)
            error = traceback = None
        except BaseException as exc:  # noqa: BLE001 - SystemExit, KeyboardInterrupt: the attempt still ends
            error, traceback = describe(exc)
        finally:
            current_job.reset(token)
        return attempt, error, traceback

    async def _run_async(self, job: Job, fn: Callable[..., Any]) -> None:
        attempt = self._begin(job)
        if attempt is None:
            return
        current_job.set(functools.partial(self.store.log, job.id))  # each task has its own copy of the context
        try:
            args, kwargs = self._arguments(job)
            await fn(JobContext(self, job, attempt), *args, **kwargs)
            error = traceback = None
        except asyncio.CancelledError:  # shutdown cancels what still runs: record it, then end
            error, traceback = INTERRUPTED, None
        except BaseException as exc:  # noqa: BLE001 - a SystemExit must not stop the loop thread
            error, traceback = describe(exc)
        self._finished(job, attempt, error, traceback)

    def _begin(self, job: Job) -> int | None:
        """The attempt number about to run, or None if the child was cancelled meanwhile."""
        if job.kind != "child":
            return 1
        return job.attempt if self.store.begin_child(job) else None

    @staticmethod
    def _arguments(job: Job) -> tuple[tuple, dict]:
        return (job.args, job.kwargs) if job.kind == "child" else ((), {})

    def _finished(self, job: Job, attempt: int, error: str | None, traceback: str | None) -> None:
        if job.kind != "child":
            self._start_handler(self.store.handler_returned(job, error, traceback))
            return
        retry, next_step = self.store.end_child(job, error, traceback, attempt)
        if retry:
            try:
                self._submit(job.fn, job)
            except RuntimeError:  # shut down: its cancel already settled the pending retry
                pass
        self._start_handler(next_step)

    # ------------------------------------------------------------------ queued work (Redis)

    def _consume(self) -> None:
        """Take queued work while there is room on this process's workers, and run it."""
        while not self.closed.is_set():
            with self._capacity:
                while self._busy >= self.max_workers and not self.closed.is_set():
                    self._capacity.wait(0.5)
                room = self.max_workers - self._busy
            if self.closed.is_set():
                return
            try:
                batch = self.store.take_work(room, block=0.5)
            except Exception:  # noqa: BLE001 - Redis gone for long, or a bug: say it, keep serving
                logger.exception("stepstream: taking queued work failed; trying again in 1 s")
                self.closed.wait(1.0)
                continue
            for entry, job in batch:
                with self._capacity:
                    self._busy += 1
                try:
                    self._run_queued(entry, job)
                except Exception:  # noqa: BLE001
                    logger.exception("stepstream: could not run %s %s", job.kind, job.id)
                    self._queued_done(entry)

    def _run_queued(self, entry: Any, job: Job) -> None:
        fn = self._queued_fn(job)
        if inspect.iscoroutinefunction(fn):
            future = asyncio.run_coroutine_threadsafe(self._run_async(job, fn), self._event_loop())
            future.add_done_callback(lambda _: self._queued_done(entry))
        else:
            self._pool.submit(self._run_then_done, entry, job, fn)

    def _queued_fn(self, job: Job) -> Callable[..., Any]:
        """What runs for queued work: a child's function or a step's handler, found by name in
        this process's definitions (or a stand-in that fails it with the reason)."""
        if job.kind == "child":
            try:
                return resolve(job.fn)
            except LookupError as exc:
                return functools.partial(_missing, str(exc))
        found = self._definitions.get(job.manager.definition)
        if found is None:
            return functools.partial(_missing, f"definition {job.manager.definition!r} is not defined in this "
                                               "worker's APP")
        return found.steps[job.index].handler

    def _run_then_done(self, entry: Any, job: Job, fn: Callable[..., Any]) -> None:
        """Run queued work on this thread, then the work its end took, while there is some.

        After a short child (under `SHORT_CHILD` seconds), up to `CHILD_BATCH` children are taken
        at once: they begin together, run one after the other here, and their ends are committed
        together with the next batch's start, while they stay short: one Redis commit for them all
        instead of one each (see docs/architecture.md, "Short children")."""
        held = [(entry, job)]  # begun, to run here, in order
        ended: list[tuple] = []  # children that returned here, their end not committed yet
        try:
            while held:
                entry, job = held.pop(0)
                fn = self._queued_fn(job)
                if job.kind != "child" or inspect.iscoroutinefunction(fn):
                    self._end_held(ended, 0)
                    self._run_elsewhere(entry, job, fn)
                    continue
                if ended and not self._short.get(job.fn, False):
                    self._end_held(ended, 0)  # this one may take long: the others' ends go first
                started = time.monotonic()
                outcome = self._call(job, fn)
                if outcome is None:
                    self.store.done_work(entry)
                    continue
                short = self._short[job.fn] = time.monotonic() - started < SHORT_CHILD
                attempt, error, traceback = outcome
                ended.append((job, attempt, self.store.settle_spawns(error), traceback, time.time()))
                if held and short:
                    continue  # it ends with the rest of its batch
                want = 0 if self.closed.is_set() or held else CHILD_BATCH if short else 1
                held += self._end_held(ended, want)
        finally:
            unfinished = [self.store.work.entry_of(child.id) for child, *_ in ended] + [e for e, _ in held]
            for left in unfinished:  # their ends could not be committed (Redis gone): redelivered later
                if left is not None:
                    self.store.work.drop(left)
            self._release()

    def _end_held(self, ended: list[tuple], want: int) -> list[tuple[Any, Job]]:
        """Commit the ends of `ended` (emptied) and take up to `want` new entries, begun."""
        if not ended:
            return []
        batch, ended[:] = list(ended), []
        return self.store.end_and_take(batch, want, lambda child: self._short.get(child.fn, False))

    def _run_elsewhere(self, entry: Any, job: Job, fn: Callable[..., Any]) -> None:
        """A step's handler (on this thread) or an async function (on the event loop), on a
        place of its own."""
        if inspect.iscoroutinefunction(fn):
            with self._capacity:
                self._busy += 1
            future = asyncio.run_coroutine_threadsafe(self._run_async(job, fn), self._event_loop())
            future.add_done_callback(lambda _: self._queued_done(entry))
            return
        self._run_sync(job, fn)
        self._acknowledge(entry)

    def _queued_done(self, entry: Any) -> None:
        self._acknowledge(entry)
        self._release()

    def _acknowledge(self, entry: Any) -> None:
        """The work is done here: it leaves the queue (if it was not acknowledged with its change,
        nor handed back at shutdown)."""
        try:
            if entry.id in self.store.work.inflight:
                self.store.done_work(entry)
        except Exception:  # noqa: BLE001 - not acknowledged: redelivered after the visibility timeout
            logger.exception("stepstream: could not acknowledge finished work")

    def _release(self) -> None:
        """A place on this process's workers is free again."""
        with self._capacity:
            self._busy -= 1
            self._capacity.notify_all()

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="stepstream-async", daemon=True)
                thread.start()
                self._loop = loop
            return self._loop

    def shutdown(self, wait: bool = True) -> None:
        """Cancel running manager jobs and stop taking work. With `wait`, let running code
        return first; without, settle what still runs at once as interrupted (its threads are
        let go: a late return changes nothing). Either way every job ends terminal. Idempotent."""
        if self.closed.is_set():
            return
        self.closed.set()
        if self.store.queued:
            self._shutdown_queued(wait)
            return
        running = self.store.running_managers()
        for manager_id in running:
            try:
                self.store.cancel(manager_id)
            except StepstreamError:
                pass  # finished meanwhile
        self._pool.shutdown(wait=wait)
        for manager_id in running:
            try:
                self.store.abandon(manager_id, INTERRUPTED)
            except StepstreamError:
                pass
        self.store.close()  # what is left goes to the journal
        loop = self._loop
        if loop is not None:
            drained = asyncio.run_coroutine_threadsafe(_cancel_tasks(), loop)
            drained.add_done_callback(lambda _: loop.call_soon_threadsafe(loop.stop))
            if wait:
                drained.result(timeout=10)

    def _shutdown_queued(self, wait: bool) -> None:
        """Stop taking work; jobs go on (other processes run them). With `wait`, let what runs
        here end; without, hand it back at once (a child runs again elsewhere, a step handler's
        step fails: see docs/architecture.md)."""
        if self._consumer is not None:
            self._consumer.join(5)
        self._pool.shutdown(wait=wait)
        if wait:
            with self._capacity:
                self._capacity.wait_for(lambda: self._busy == 0, 30)
        else:
            self.store.release_work("its worker process stopped")
        self.store.close()
        loop = self._loop
        if loop is not None:
            drained = asyncio.run_coroutine_threadsafe(_cancel_tasks(), loop)
            drained.add_done_callback(lambda _: loop.call_soon_threadsafe(loop.stop))

    def __enter__(self) -> Orchestrator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
