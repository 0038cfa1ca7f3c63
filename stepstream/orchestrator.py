"""The orchestrator: job definitions and commands, over one backend and one runner.

The backend (`backends.open_backend`: memory, a SQLite journal, or Redis) keeps every job and
applies every change through the one engine; the runner runs the work the backend says is
runnable (in this process, or taken from Redis's shared queue). The orchestrator has no branch on
which backend it has: it validates, asks the backend, and hands what became runnable to the runner.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import backends
from . import params as params_rules
from .attempt import INTERRUPTED, Attempts, JobContext
from .backend import Backend
from .callables import resolve
from .jobs import Job
from .journal import Journal
from .logbridge import install_logging_bridge
from .model import InvalidParams, NotFound, StepstreamError
from .runner import Runner
from .text import safe_str

__all__ = ["INTERRUPTED", "Definition", "JobContext", "Orchestrator", "Step"]

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


@dataclass(frozen=True)
class Definition:
    """A registered job definition: its steps and the optional check of its params."""

    name: str
    steps: tuple[Step, ...]
    validate: Callable[[dict], Any] | None = None


class Orchestrator:
    """Runs manager jobs of registered definitions; all state lives in `self.store` (its
    backend), and work runs on `self.runner`."""

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
        self.settings = backends.Settings(replay_size=replay_size, max_finished=max_finished,
                                          max_logs_per_step=max_logs_per_step, max_args_bytes=max_params_bytes,
                                          visibility_timeout=visibility_timeout)
        self.max_workers = max_workers
        self.max_params_depth = max_params_depth
        self.max_params_bytes = max_params_bytes
        self._definitions: dict[str, Definition] = {}
        self._attempts = Attempts(self, self._function)
        self.closed = threading.Event()  # set by shutdown()
        install_logging_bridge(capture_level)
        self._use(backends.open_backend(self.settings, db=db, journal=journal, redis=redis), max_workers)

    def _use(self, opened: backends.Opened, workers: int) -> None:
        """Hold `opened`'s backend, and a runner of its kind with `workers` threads."""
        if self.store_in_use:
            raise StepstreamError("the storage can only be chosen before any job runs")
        old_runner, old_store = getattr(self, "runner", None), getattr(self, "store", None)
        self.store: Backend = opened.backend
        self.runner: Runner = opened.make_runner(self._attempts, workers)
        if old_runner is not None:
            old_runner.shutdown(False, lambda: None)
        if old_store is not None:
            old_store.close()

    @property
    def store_in_use(self) -> bool:
        """True once a job ran here (or it was shut down): the storage is then chosen for good."""
        store = getattr(self, "store", None)
        return self.closed.is_set() or (store is not None and bool(store.seq or store.visible_seq))

    @property
    def journal(self) -> Journal | None:
        """Where the history is kept; None: in memory only (or in Redis)."""
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
        """Why storage cannot be used right now, or None. May block briefly (a Redis PING) when
        `check_blocks`."""
        return self.store.check_storage()

    @property
    def check_blocks(self) -> bool:
        """Whether `check_storage` may block: False when it only reads what memory holds."""
        return self.store.check_blocks

    def use_journal(self, journal: Journal) -> None:
        """Keep history in `journal` (e.g. `SqliteJournal(path)`) from now on: for a command line
        that chooses the storage of an orchestrator made elsewhere. Only before any job ran."""
        self._use(backends.open_backend(self.settings, journal=journal), self.max_workers)

    def use_redis(self, url: str, *, workers: int | None = None, visibility_timeout: float = 30.0,
                  retain_jobs: int | None = None, retain_days: float | None = None,
                  prefix: str = "stepstream:") -> None:
        """Keep every job in the Redis at `url` (`redis://host:port/db`), shared by every process
        that uses it, and run `workers` threads of queued work here (default `max_workers`; 0:
        none). Only before any job ran here. Finished jobs beyond `retain_jobs` (default
        `max_finished`) or older than `retain_days` are let go."""
        if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 0):
            raise ValueError(f"workers must be an int of at least 0, not {workers!r}")
        if self.store_in_use:
            raise StepstreamError("the storage can only be chosen before any job runs")
        self.settings = self.settings.replace(visibility_timeout=visibility_timeout)
        opened = backends.open_redis(self.settings, url, prefix=prefix, retain_jobs=retain_jobs,
                                     retain_days=retain_days)
        if workers is not None:
            self.max_workers = workers
        self._use(opened, self.max_workers)

    def use_celery(self, app: Any, *, redis: str | None = None, visibility_timeout: float | None = None) -> None:
        """Run this orchestrator's work on the Celery workers of `app` (a `celery.Celery`) instead of
        stepstream's own worker loop. The state stays in the Redis backend, which every process must
        reach: `redis=` opens it here (with no worker threads of its own), else it must be open
        already. Every process of the deployment -- servers, scripts that start jobs, and the
        Celery workers, which import the module that calls this -- does the same. Only before any
        job ran here. See docs/celery.md."""
        if self.store_in_use:
            raise StepstreamError("the runner can only be chosen before any job runs")
        if redis is not None:
            self.use_redis(redis, workers=0, visibility_timeout=visibility_timeout or
                           self.settings.visibility_timeout)
        old = self.runner
        self.runner = backends.celery_runner(self.store, self._attempts, app)
        old.shutdown(False, lambda: None)

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
        manager, runnable = self.store.create_manager(
            definition, [s.name for s in found.steps], json.loads(text), params_json=text, rerun_of=rerun_of
        )
        self.runner.submit(runnable)
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
        child, runnable = self.store.add_child(fn, args, kwargs, retries, step_id=step_id, parent_id=parent_id)
        self.runner.submit(runnable)
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
        """Log lines of a job: `step=`, `level=`, `after=`, `before=`, `limit=`, `q=` (lines that
        contain it) as in the HTTP API."""
        return self.store.logs(job_id, **query)

    def jobs(self, **query: Any) -> dict:
        """Manager jobs, newest first: `status=`, `definition=`, `q=` (any part of an id or a
        definition name), `limit=`, `cursor=` as in `GET /api/jobs`."""
        return self.store.list_managers(**query)

    def children(self, job_id: str, **query: Any) -> dict:
        """Children of a manager or step: `step=`, `status=`, `limit=`, `cursor=`."""
        return self.store.children(job_id, **query)

    def stats(self) -> dict:
        """`{"seq", "managers": {status: n}, "counters": {...}}`: what `GET /metrics` shows."""
        return self.store.stats()

    def workers(self) -> dict | None:
        """`{"size": n, "busy": m, "scope": "deployment" | "process"}`: the runner's worker threads
        and how many run work now (in memory, no storage call). In one process (`scope`
        `deployment`) they are every worker; with Redis only this process's; None on Celery
        (its workers are Celery's)."""
        return self.runner.workers()

    @property
    def seq(self) -> int:
        """The seq of the latest change."""
        return self.store.seq

    # ------------------------------------------------------------------ running

    def _function(self, job: Job) -> Callable[..., Any]:
        """The code that runs for `job`: a child's function (itself, or found by its name in this
        process), or its step's handler in this process's definitions; else a stand-in that fails
        the attempt saying why."""
        if job.kind == "child":
            if callable(job.fn):
                return job.fn
            try:
                return resolve(job.fn)
            except LookupError as exc:
                return functools.partial(_missing, str(exc))
        found = self._definitions.get(job.manager.definition)
        if found is None:
            return functools.partial(_missing, f"definition {job.manager.definition!r} is not defined in this "
                                               "worker's APP")
        return found.steps[job.index].handler

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking work. Jobs this process holds alone (in memory, in its journal) are
        cancelled: with `wait`, running code returns first; without, what still runs is settled
        at once as interrupted (its threads are let go: a late return changes nothing). Jobs in
        Redis go on, run by the other processes. Either way every job here ends terminal.
        Idempotent."""
        if self.closed.is_set():
            return
        self.closed.set()
        running = self.store.cancel_for_shutdown()

        def abandon() -> None:
            for manager_id in running:
                try:
                    self.store.abandon(manager_id, INTERRUPTED)
                except StepstreamError:
                    pass

        self.runner.shutdown(wait, abandon)
        self.store.close()  # what is left goes to the journal

    def __enter__(self) -> Orchestrator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
