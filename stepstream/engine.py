"""The transitions of the job graph: one engine that every backend applies.

`Engine` changes the jobs a change touches and records what happened: the events (numbered
from its `seq`), the jobs whose stored state changed, the work that became runnable and the
managers that settled. It holds no lock and does no I/O, and it never calls back into whoever
holds the jobs: the memory backend applies a change under its lock and then writes the result to
its ring and journal; the Redis backend applies it to jobs it loaded and commits the result in
one script. The rules themselves (which status follows which) are pure functions in `model`.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable, Mapping
from typing import Any

from . import model, queries, wire
from .encoding import call_summary
from .events import Event
from .jobs import FinishedChildren, Job, child_ids, new_manager, new_step
from .logs import Record
from .model import (
    CANCELLED,
    CHILD,
    FAILED,
    MANAGER,
    PENDING,
    RUNNING,
    SKIPPED,
    SLOT,
    STEP,
    Conflict,
    InvalidRequest,
    InvalidTransition,
    NotFound,
    iso,
)
from .text import bounded, clean, safe_str


class Change:
    """What the changes since the last `Engine.take()` did."""

    __slots__ = ("events", "managers", "children", "runnable", "settled", "deleted", "finished")

    def __init__(self) -> None:
        # Made for every change, so only what every change needs is made here; the rest on use.
        self.events: list[Event] = []  # in seq order
        self.managers: dict[str, Job] = _NONE  # managers whose stored state changed (engines that record them)
        self.children: dict[str, Job] = _NONE  # children whose stored state changed (likewise)
        self.runnable: list[Job] = []  # step handlers to start, child attempts to run
        self.settled: list[Job] = []  # managers that settled (`end` emitted)
        self.deleted: list[str] = []  # managers deleted (rare: two small lists cost less than a test on use)
        self.finished = False  # some job reached a terminal status (waiters may want to know)


    def reset(self) -> list[Job]:
        """Empty this record for the next changes (for a holder done with it, see
        `Engine.record`); the work that was runnable, which stays the caller's."""
        runnable = self.runnable
        if runnable:
            self.runnable = []
        else:
            runnable = []  # the caller's own: the record's list grows with the next change
        self.events.clear()
        if self.managers:
            self.managers.clear()
        if self.children:
            self.children.clear()
        if self.settled:
            self.settled.clear()
        if self.deleted:
            self.deleted.clear()
        self.finished = False
        return runnable


_NONE: dict = {}  # what a change that records no jobs holds: never written to


def _step_progress(manager_id: str, step_id: str, name: str, index: int, status: str, total: int,
                   counts: tuple[int, ...], log_count: int) -> dict:
    return {"manager_id": manager_id, "step_id": step_id, "step_name": name, "index": index, "status": status,
            "progress": model.progress_dict(total, counts), "log_count": log_count}


def _job_progress(manager_id: str, status: str, total: int, counts: tuple[int, ...], log_count: int) -> dict:
    return {"manager_id": manager_id, "status": status, "progress": model.progress_dict(total, counts),
            "log_count": log_count}


def _with_traceback(line: str, traceback: str | None) -> str:
    return f"{line}\n{traceback}" if traceback else line


EARLIER_ATTEMPTS = 5  # a child keeps the errors of its last this many earlier attempts
EARLIER_ERROR_CHARS = 300  # each one line, at most this long


_CHILD_COUNTER = {status: f"child_{status}" for status in model.STATUSES}  # the metrics' names, made once


def earlier_attempts(child: Job, error: str) -> tuple[dict, ...]:
    """The child's earlier attempts with the one that just ended (`error`) added: a new tuple
    (the stored copy is compared with the old one), the last `EARLIER_ATTEMPTS`."""
    line = bounded(error.splitlines()[0] if error else "", EARLIER_ERROR_CHARS)
    return (*child.attempts, {"attempt": child.attempt, "error": line})[-EARLIER_ATTEMPTS:]


def get(jobs: Mapping[str, Job | FinishedChildren], job_id: object) -> Job:
    """The job `job_id` among `jobs` (where a settled manager's children may be kept compactly:
    `jobs.FinishedChildren`), or NotFound."""
    try:
        job = jobs[job_id]  # type: ignore[index]
    except (KeyError, TypeError):  # TypeError: an id that is not even hashable
        raise NotFound(f"no job with id {job_id!r}") from None
    return job.find(job_id) if type(job) is FinishedChildren else job  # a settled manager's child, rebuilt


def require_manager(job: Job, action: str = "use") -> Job:
    """`job` if it is a manager (`queries.require_manager`)."""
    queries.require_manager(job.id, job.kind, job.manager.id, action)
    return job


class Engine:
    """Transitions on `jobs` (a dict the engine adds created jobs to and removes deleted ones
    from). Not thread-safe: its holder serialises changes."""

    def __init__(self, jobs: dict[str, Job] | None = None, *, seq: int = 0, ordinal: int = 1,
                 max_logs_per_step: int = 20_000, record_jobs: bool = True) -> None:
        self.jobs: dict[str, Job] = {} if jobs is None else jobs
        self.record_jobs = record_jobs  # note the managers and children changed (for a journal)
        self.seq = seq
        self.max_logs_per_step = max_logs_per_step
        self.ordinals = itertools.count(ordinal)
        # Running totals for metrics: events by type, child transitions by status, log lines by level.
        self.counters: collections.Counter[str] = collections.Counter()
        # What the changes since the last `take()` did; a holder that is done with it before the
        # next change (under its lock) may read it here and `reset()` it instead: no record per change.
        self.record = Change()

    def take(self) -> Change:
        """What the changes since the last call did; the engine starts a new record."""
        change, self.record = self.record, Change()
        return change



    # ------------------------------------------------------------------ events

    def _emit(self, type_: str, manager: Job | None, key: str | None, data: dict | None, manager_id: str = "",
              make: Callable[..., dict] | None = None, args: tuple = ()) -> None:
        """The next event: `data`, or `make(*args)`, its data made when first read (see `Event`)."""
        self.seq = seq = self.seq + 1
        self.counters[type_] += 1
        if data is not None:
            data["seq"] = seq
        change = self.record
        manager_id = manager.id if manager is not None else manager_id
        change.events.append(Event(seq, type_, manager_id, key, data, make, args))
        if manager is not None and self.record_jobs:
            if change.managers is _NONE:
                change.managers = {}
            change.managers[manager.id] = manager

    def _emit_status(self, job: Job) -> None:
        if job.kind != CHILD:
            self._emit("job_status", job.manager, None, wire.status_event(job))
            return
        # A child's: its data made when first read, from a snapshot of its fields now.
        self._emit("job_status", job.manager, None, None, make=wire.child_status_of,
                   args=(wire.child_fields(job),))
        if self.record_jobs:
            change = self.record
            if change.children is _NONE:
                change.children = {}
            change.children[job.id] = job

    def _emit_progress(self, step: Job) -> None:
        """A step's and its manager's progress events; their data is made when first read (most
        are superseded by a later one first: streams and the journal keep the latest)."""
        manager = step.manager
        self._emit("step_progress", manager, step.id, None, make=_step_progress, args=(
            manager.id, step.id, step.name, step.index, step.status, step.total, tuple(step.counts), step.log_count))
        self._emit("job_progress", manager, manager.id, None, make=_job_progress, args=(
            manager.id, manager.status, manager.total, tuple(manager.counts), manager.log_count))

    def _set_status(self, job: Job, new: str, now: float) -> None:
        """The one place a status changes; terminal statuses never change again."""
        if not model.can_transition(job.kind, job.status, new):
            raise InvalidTransition(f"{job.kind} {job.id} cannot go from {job.status} to {new}")
        if job.kind == CHILD:
            self.counters[_CHILD_COUNTER[new]] += 1
            for counted in (job.step, job.manager):
                counted.counts[SLOT[job.status]] -= 1
                counted.counts[SLOT[new]] += 1
        job.status = new
        if new == RUNNING:
            job.started_at = now
        elif model.is_terminal(new):
            job.finished_at = now
            self.record.finished = True

    # ------------------------------------------------------------------ managers

    def create_manager(self, definition: str, step_names: list[str], params: dict, *,
                       params_json: str | None = None, rerun_of: str | None = None) -> tuple[Job, Job]:
        """A new running manager with its steps; the first step is started (and runnable)."""
        now = time.time()
        manager = new_manager(definition, now, self.max_logs_per_step)
        manager.params, manager.params_json, manager.rerun_of = params, params_json, rerun_of
        for name in step_names:
            new_step(manager, name, now, self.max_logs_per_step)
        manager.ordinal = next(self.ordinals)
        self.jobs[manager.id] = manager
        for step in manager.steps:
            self.jobs[step.id] = step
        self._set_status(manager, RUNNING, now)
        first = manager.steps[0]
        self._set_status(first, RUNNING, now)
        self._emit_status(manager)
        self._append_log(first, "info", f"step {first.name} started", now)
        self._emit_progress(first)
        self.record.runnable.append(first)
        return manager, first

    def cancel(self, job_id: str) -> Job:
        """Cancel a manager job: pending children become cancelled, running ones see
        `ctx.cancelled`, later steps are skipped. Conflict if it is already terminal."""
        now = time.time()
        manager = require_manager(get(self.jobs, job_id), "cancel")
        if model.is_terminal(manager.status):
            raise Conflict(f"job {job_id} is already {manager.status}")
        manager.cancelled = True
        self._set_status(manager, CANCELLED, now)
        self._emit_status(manager)
        step = manager.steps[manager.current]
        if step.counts[SLOT[PENDING]]:
            self._cancel_held_pending(manager, now)
            self._emit_progress(step)
        self._skip_rest(manager, now)
        self._maybe_finish_step(step, now)
        return manager

    def delete(self, job_id: str) -> Job:
        """Remove a settled manager job with its steps and children; `job_deleted`. Conflict
        while it runs."""
        manager = require_manager(get(self.jobs, job_id))
        if not manager.settled:
            raise Conflict(f"job {job_id} is still {manager.status}; cancel it first")
        self.deleted(manager.id)
        if self.record.managers is not _NONE:
            self.record.managers.pop(manager.id, None)
        for job_id in itertools.chain((manager.id,), (s.id for s in manager.steps), child_ids(manager)):
            self.jobs.pop(job_id, None)
        return manager

    def deleted(self, manager_id: str) -> None:
        """Announce that manager `manager_id` is deleted (one only storage still held, say)."""
        self._emit("job_deleted", None, None, {"manager_id": manager_id}, manager_id=manager_id)
        self.record.deleted.append(manager_id)

    def interrupt(self, manager: Job, reason: str) -> None:
        """Settle a manager whose code is gone: running children fail, pending ones are
        cancelled, its step's handler counts as having raised `reason`."""
        now = time.time()
        step = manager.steps[manager.current]
        for child in manager.children:
            if child.status in (RUNNING, PENDING):
                child.error = reason
                new = FAILED if child.status == RUNNING and not manager.cancelled else CANCELLED
                self._set_status(child, new, now)
                self._emit_status(child)
                if new == FAILED:
                    self._append_log(child, "error", f"{child.name} failed: {reason}", now)
        self._emit_progress(step)
        if step.status == RUNNING:
            step.handler_returned = True
            step.handler_error = None if manager.cancelled else reason
            self._append_log(step, "error", f"step {step.name}: {reason}", now)
            self._maybe_finish_step(step, now)
        if not manager.settled:  # e.g. the process stopped between the last step and its manager
            if not model.is_terminal(manager.status):
                manager.error = reason
                self._skip_rest(manager, now)
                self._set_status(manager, FAILED, now)
                self._emit_status(manager)
            self._settle(manager)

    def abandon(self, manager_id: str, reason: str) -> None:
        """Settle every attempt of a cancelled manager that is still running (code that blocks
        and may never return) with `reason` as its error. A late return is then ignored."""
        now = time.time()
        manager = get(self.jobs, manager_id)
        if not manager.cancelled or manager.settled:
            return
        for child in manager.children:
            if child.status == RUNNING:
                self._end_attempt(child, reason, None, now)
        step = manager.steps[manager.current]
        if step.status == RUNNING and not step.handler_returned:
            self._handler_done(step, None, None, now)
            self._append_log(step, "warning", f"step {step.name} handler abandoned: {reason}", now)

    # ------------------------------------------------------------------ children

    def add_child(self, fn: Callable[..., Any], args: tuple, kwargs: dict, retries: int, *,
                  step_id: str | None = None, parent_id: str | None = None, child_id: str | None = None) -> Job:
        """A new pending (and runnable) child inside a running step, found by `step_id` or by
        `parent_id` (the step itself or any job already inside it). `child_id`: its id, made
        beforehand (by default a new one)."""
        if (step_id is None) == (parent_id is None):
            raise ValueError("give exactly one of step_id= or parent_id=")
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ValueError(f"retries must be a non-negative int, not {retries!r}")
        now = time.time()
        link = get(self.jobs, step_id or parent_id)
        if step_id is not None and link.kind != STEP:
            raise InvalidRequest(f"step_id {step_id!r} names a {link.kind} job, not a step")
        if link.kind == MANAGER:
            raise InvalidRequest(f"parent_id {parent_id!r} is a manager job; link to a step or a job inside one")
        step, manager = link.step, link.manager
        if step.status != RUNNING or manager.cancelled:
            state = "cancelled" if manager.cancelled else step.status
            raise Conflict(f"step {step.name!r} of job {manager.id} is {state}; it takes no new children")
        child = Job(CHILD, bounded(safe_str(getattr(fn, "__name__", None), "child"), 200), now)
        if child_id is not None:
            child.id = child_id
        child.manager, child.step = manager, step
        child.parent_id = parent_id if parent_id is not None else step.id
        child.depth = link.depth + 1 if link.kind == CHILD else 1
        child.fn, child.args, child.kwargs = fn, args, kwargs
        child.summary = call_summary(args, kwargs)
        child.retries, child.attempt = retries, 1
        self.jobs[child.id] = child
        child.position = len(manager.children)
        manager.children.append(child)
        for counted in (step, manager):
            counted.total += 1
            counted.counts[SLOT[PENDING]] += 1
        self._emit_status(child)
        self._emit_progress(step)
        self.record.runnable.append(child)
        return child

    def begin_child(self, child: Job) -> bool:
        """pending -> running. False if the child was cancelled before it got a worker."""
        if child.status != PENDING:
            return False
        self._set_status(child, RUNNING, time.time())
        self._emit_status(child)
        self._emit_progress(child.step)
        return True

    def end_child(self, child: Job, error: str | None, traceback: str | None = None, attempt: int | None = None,
                  finished_at: float | None = None) -> None:
        """A child's attempt returned (`error` None) or raised (at `finished_at`, by default now).
        A retry, or the next step, becomes runnable. An attempt that was already settled without
        it (abandoned at shutdown, say) changes nothing."""
        if child.status != RUNNING or (attempt is not None and attempt != child.attempt):
            return
        self._end_attempt(child, error, traceback, time.time() if finished_at is None else finished_at)

    def _end_attempt(self, child: Job, error: str | None, traceback: str | None, now: float,
                     retry: bool = True) -> None:
        manager = child.manager
        child.error = clean(error) if error is not None else None
        child.traceback = clean(traceback) if traceback is not None else None
        # Attempts lost with their worker do not count against the retries.
        if retry and model.child_retry(error is not None, child.attempt - child.lost, child.retries,
                                       manager.cancelled):
            self._set_status(child, PENDING, now)
            child.attempts = earlier_attempts(child, child.error or "")
            self._append_log(child, "warning", f"{child.name} attempt {child.attempt} of "
                             f"{child.retries + 1} failed, retrying: {child.error}", now)
            child.attempt += 1
            self._emit_status(child)
            self._emit_progress(child.step)
            self.record.runnable.append(child)
            return
        new = model.child_outcome(error is not None, manager.cancelled)
        self._set_status(child, new, now)
        if new == FAILED:
            self._append_log(child, "error", _with_traceback(f"{child.name} failed: {child.error}", child.traceback),
                             now)
        self._emit_status(child)
        self._emit_progress(child.step)
        self._maybe_finish_step(child.step, now)

    def lose_attempt(self, child: Job, attempt: int, reason: str) -> bool:
        """The worker running `attempt` of `child` vanished (a shared deployment). The child runs
        again as a new attempt (`model.child_rerun_lost`) or fails with `reason`. True if it runs
        again; False if it failed, or if that attempt had ended anyway."""
        now = time.time()
        if child.status != RUNNING or attempt != child.attempt:
            return False
        child.lost = (child.lost or 0) + 1
        if model.child_rerun_lost(child.lost, child.manager.cancelled):
            self._set_status(child, PENDING, now)
            child.attempts = earlier_attempts(child, clean(reason))
            self._append_log(child, "warning", f"{child.name} attempt {child.attempt}: {reason}; "
                             "running it again", now)
            child.attempt += 1
            self._emit_status(child)
            self._emit_progress(child.step)
            self.record.runnable.append(child)
            return True
        self._end_attempt(child, f"{reason} ({child.lost} times)", None, now, retry=False)
        return False

    def cancel_pending(self, manager_id: str) -> None:
        """Cancel the pending children held here of a cancelled manager: `cancel`'s work on its
        children, for a shared deployment, where a manager is cancelled first and its pending
        children then in parts (or by the worker that takes one)."""
        now = time.time()
        manager = get(self.jobs, manager_id)
        for step in self._cancel_held_pending(manager, now) if manager.cancelled else []:
            self._emit_progress(step)
            self._maybe_finish_step(step, now)

    def _cancel_held_pending(self, manager: Job, now: float) -> list[Job]:
        """Cancel the pending children of `manager` held here; the steps they were in."""
        steps: dict[str, Job] = {}
        for child in manager.children:
            if child.status == PENDING:
                self._set_status(child, CANCELLED, now)
                self._emit_status(child)
                steps[child.step.id] = child.step
        return list(steps.values())

    # ------------------------------------------------------------------ steps

    def handler_returned(self, step: Job, error: str | None, traceback: str | None = None) -> None:
        """The step's handler returned or raised. A handler already settled without it
        (abandoned at shutdown) changes nothing."""
        if step.handler_returned:
            return
        self._handler_done(step, error, traceback, time.time())

    def _handler_done(self, step: Job, error: str | None, traceback: str | None, now: float) -> None:
        step.handler_returned = True
        step.handler_error = clean(error) if error is not None else None  # the step's error once it finishes
        step.handler_traceback = clean(traceback) if traceback is not None else None
        if error is not None:
            self._append_log(step, "error", _with_traceback(f"step {step.name} handler raised {step.handler_error}",
                                                            step.handler_traceback), now)
        self._maybe_finish_step(step, now)

    def finish_step_if_done(self, step: Job) -> None:
        """Finish a running step whose handler returned and whose children all ended (a change
        that ended its last child elsewhere may not have seen the others end)."""
        self._maybe_finish_step(step, time.time())

    def _maybe_finish_step(self, step: Job, now: float) -> None:
        if step.status != RUNNING or not model.step_is_done(step.handler_returned, step.counts):
            return
        manager = step.manager
        status = model.step_outcome(step.handler_error is not None, manager.cancelled, step.total, step.counts)
        if status == FAILED:
            step.error = step.handler_error or f"all {step.total} children failed"
            step.traceback = step.handler_traceback
        self._set_status(step, status, now)
        self._emit_status(step)
        counts = ", ".join(f"{n} {k}" for k, n in step.progress().items() if n and k != "total")
        self._append_log(step, "error" if status == FAILED else "info",
                         f"step {step.name} {status}" + (f": {counts}" if counts else "")
                         + (f" ({step.error})" if step.error else ""), now)
        self._emit_progress(step)
        if manager.cancelled:
            self._settle(manager)
            return
        outcome = model.manager_outcome(status, step.index == len(manager.steps) - 1)
        if outcome is None:
            manager.current = step.index + 1
            following = manager.steps[manager.current]
            self._set_status(following, RUNNING, now)
            self._emit_status(following)
            self._append_log(following, "info", f"step {following.name} started", now)
            self._emit_progress(following)
            self.record.runnable.append(following)
            return
        if outcome == FAILED:
            manager.error = f"step {step.name!r} failed: {step.error}"
            manager.traceback = step.traceback
        self._skip_rest(manager, now)
        self._set_status(manager, outcome, now)
        self._emit_status(manager)
        self._settle(manager)

    def _skip_rest(self, manager: Job, now: float) -> None:
        for later in manager.steps[manager.current + 1 :]:
            if later.status == PENDING:
                self._set_status(later, SKIPPED, now)
                self._emit_status(later)
                self._emit_progress(later)

    def _settle(self, manager: Job) -> None:
        """Manager and all its steps are terminal: announce `end`, with the time it finished: a
        manager cancelled while its step ran finishes when that step does (never before one of
        its steps)."""
        manager.settled = True
        last = max((s.finished_at for s in manager.steps if s.finished_at is not None), default=None)
        if last is not None and manager.finished_at is not None and last > manager.finished_at:
            manager.finished_at = last
        self._emit("end", manager, None, {"manager_id": manager.id, "status": manager.status,
                                          "finished_at": iso(manager.finished_at)})
        manager.end_seq = self.seq
        self.record.settled.append(manager)

    # ------------------------------------------------------------------ logs

    def log(self, job_id: str, level: str, message: str) -> Record:
        """A log line under the job that wrote it (`message` already made safe and bounded)."""
        return self._append_log(get(self.jobs, job_id), level, message, time.time())

    def _append_log(self, job: Job, level: str, message: str, now: float) -> Record:
        manager, step = job.manager, job.step
        owner = step if step is not None else manager
        record = {
            "seq": self.seq + 1, "ts": iso(now), "level": level, "message": message,
            "job_id": job.id, "step_id": step.id if step else None,
            "step_name": step.name if step else None, "manager_id": manager.id,
        }  # fmt: skip
        owner.bucket.append(record)
        self.counters[f"log_{level}"] += 1
        owner.log_count += 1
        if owner is not manager:
            manager.log_count += 1
        # Absolute counts ride along, so a client never has to count lines itself.
        self._emit("log", manager, None, {**record, "log_count": owner.log_count,
                                          "manager_log_count": manager.log_count})
        return record
