"""The thread-safe store: jobs, transitions, O(1) counters, one seq and the event ring.

Everything that changes state goes through a method of `Store`, under its one lock. A change
updates the job, its step's and manager's counters (two integer updates each), takes the next
seq and appends an event to the replay ring — all before the lock is released — so a snapshot
taken at seq S plus the events after S always equals the current state. Work that can block
(running handlers, waking subscribers) happens outside the lock.
"""

from __future__ import annotations

import collections
import itertools
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from . import model, wire
from .events import Event, Gone
from .history import History
from .jobs import Job, rebuild
from .journal import Batch, Journal
from .logbridge import current_job
from .logs import LogBucket, Record, query
from .model import (
    CANCELLED,
    CHILD,
    COMPLETED,
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
from .text import MAX_LOG_CHARS, bounded, clean, describe, safe_str

logger = logging.getLogger("stepstream")

INTERRUPTED_BY_STOP = "interrupted: the server stopped while this job ran"
COMMIT_INTERVAL = 0.005  # seconds between the starts of two journal commits, at least


class _Guard:
    """The store's lock, remembering per thread that it is held.

    A change can run arbitrary code while the lock is held (a garbage-collector finaliser that
    logs, say); if that code logs from inside a job, the `logging` bridge would call back into
    the store and deadlock on its own lock. Such lines are kept aside and stored right after
    the lock is released instead.
    """

    __slots__ = ("lock", "local", "store")

    def __init__(self, lock: threading.Condition, store: Store) -> None:
        self.lock = lock
        self.local = threading.local()
        self.store = store

    @property
    def held(self) -> bool:
        return getattr(self.local, "held", False)

    def __enter__(self) -> None:
        self.lock.acquire()
        self.local.held = True

    def __exit__(self, *exc: object) -> None:
        self.local.held = False
        self.lock.release()
        deferred = getattr(self.local, "deferred", None)
        if deferred:
            self.local.deferred = []
            for job_id, level, message in deferred:
                try:
                    self.store.log(job_id, level, message)
                except NotFound:
                    pass  # evicted meanwhile

    def defer(self, job_id: str, level: str, message: str) -> None:
        if getattr(self.local, "deferred", None) is None:
            self.local.deferred = []
        self.local.deferred.append((job_id, level, message))


def _with_traceback(line: str, traceback: str | None) -> str:
    return f"{line}\n{traceback}" if traceback else line


class Store:
    """Thread-safe state of all jobs, with a global seq and a bounded replay ring of events."""

    queued = False  # work runs where it is made (the orchestrator's pool), not from a shared queue

    def __init__(
        self,
        *,
        replay_size: int = 100_000,
        max_finished: int = 1000,
        max_logs_per_step: int = 20_000,
        journal: Journal | None = None,
        recording: bool = False,
    ) -> None:
        if replay_size < 16 or max_finished < 1 or max_logs_per_step < 1:
            raise ValueError("replay_size >= 16, max_finished >= 1 and max_logs_per_step >= 1")
        self.run_id = secrets.token_hex(6)  # tells event ids of one process run from another
        self.replay_size = replay_size
        self.max_finished = max_finished
        self.max_logs_per_step = max_logs_per_step
        self._cond = threading.Condition(threading.Lock())
        self._guard = _Guard(self._cond, self)
        self._seq = 0
        self._ring: list[Event | None] = [None] * replay_size
        self._jobs: dict[str, Job] = {}
        self._managers: dict[str, Job] = {}  # creation order
        self._finished: deque[Job] = deque()
        self._ordinals = itertools.count(1)
        self._listeners: list[Callable[[], None]] = []
        self._waiters = 0  # threads in wait(); skip notify_all() when there are none
        # Running totals for metrics: events by type, child transitions by status, log lines by level.
        self.counters: collections.Counter[str] = collections.Counter()
        self._journal = journal
        self._history = History(journal)
        self._floor = 0  # events up to here were written by an earlier process: not in the ring
        self._durable = 0  # the last seq the journal committed
        self._durable_cond = threading.Condition(threading.Lock())
        # Changes not yet handed to the journal (under the lock), and the writer thread.
        self._unwritten: list[Event] = []
        self._dirty_managers: dict[str, Job] = {}
        self._dirty_children: dict[str, Job] = {}
        self._deleted: list[str] = []
        self._writer_wake = threading.Event()
        self.journal_error: str | None = None  # why the last write failed, while it fails
        self._closing = False
        self._writer: threading.Thread | None = None
        # Keep every event and changed job for the caller to write (a journal, or `scratch`).
        self._recording = recording or journal is not None
        if journal is not None:
            self._open_journal(journal)

    # ------------------------------------------------------------------ the journal

    def _open_journal(self, journal: Journal) -> None:
        """Continue where the journal left off: its store id (event ids stay valid), its seq
        and ordinals; jobs it holds unfinished are rebuilt and settled as interrupted, with
        events like any change. Then the writer thread starts."""
        loaded = journal.load(self.run_id, self.max_logs_per_step)
        self.run_id = loaded.store_id
        self._seq = self._floor = self._durable = loaded.seq
        self._ordinals = itertools.count(loaded.ordinal + 1)
        self._writer = threading.Thread(target=self._write_loop, name="stepstream-journal", daemon=True)
        self._writer.start()
        now = time.time()
        for kept in loaded.unsettled:
            with self._guard:
                manager = rebuild(kept, self.max_logs_per_step)
                self._jobs[manager.id] = self._managers[manager.id] = manager
                for job in itertools.chain(manager.steps, manager.children):
                    self._jobs[job.id] = job
                self._interrupt(manager, INTERRUPTED_BY_STOP, now)
            self._notify()

    def _interrupt(self, manager: Job, reason: str, now: float) -> None:
        """Settle a manager whose code is gone: running children fail, pending ones are
        cancelled, its step's handler counts as having raised `reason`."""
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

    def _write_loop(self) -> None:
        """The writer thread: hand each batch of changes to the journal (group commit: what
        piles up during one commit goes into the next), then make it visible."""
        last_commit = 0.0
        while True:
            if not self._closing:
                self._writer_wake.wait()
                # Fewer, bigger commits under load: each one rewrites whole pages of the WAL.
                pause = last_commit + COMMIT_INTERVAL - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            self._writer_wake.clear()
            last_commit = time.monotonic()
            with self._guard:
                batch = self._take_batch()
            if batch is not None:
                try:
                    self._journal.write(batch)  # type: ignore[union-attr]
                except Exception as exc:  # the changes stay unwritten (and unseen); they go with the next batch
                    if self.journal_error is None:
                        logger.exception("stepstream: writing to the journal failed; retrying every second")
                    self.journal_error = describe(exc)[0]
                    if self._closing:  # nobody saw these changes (never visible); say what is not kept
                        logger.error("stepstream: closing with %d changes not written to the journal",
                                     len(batch.events))
                        return
                    with self._guard:
                        self._requeue(batch)
                    time.sleep(1.0)
                    self._writer_wake.set()
                    continue
                if self.journal_error is not None:
                    logger.warning("stepstream: writing to the journal works again")
                    self.journal_error = None
                with self._durable_cond:
                    self._durable = max(self._durable, batch.last_seq)
                    self._durable_cond.notify_all()
                with self._guard:
                    self._evict_finished()
                self._call_listeners()
            elif self._closing:
                return

    def _take_batch(self) -> Batch | None:
        if not self._unwritten and not self._deleted:
            return None
        events, self._unwritten = self._unwritten, []
        managers, self._dirty_managers = self._dirty_managers, {}
        children, self._dirty_children = self._dirty_children, {}
        deleted, self._deleted = self._deleted, []
        return Batch(
            events=events,
            managers=[(m.id, m.ordinal, m.definition, m.status, m.settled, m.end_seq, wire.manager_json(m),
                       [step.id for step in m.steps]) for m in managers.values()],
            children=[(c.id, c.manager.id, c.step.id, c.position, c.status, wire.child_json(c))
                      for c in children.values()],
            deleted=deleted,
        )

    def _requeue(self, batch: Batch) -> None:
        self._unwritten[:0] = batch.events
        self._deleted[:0] = batch.deleted
        for manager_id, *_ in batch.managers:
            job = self._jobs.get(manager_id)
            if job is not None:
                self._dirty_managers.setdefault(manager_id, job)
        for child_id, *_ in batch.children:
            job = self._jobs.get(child_id)
            if job is not None:
                self._dirty_children.setdefault(child_id, job)

    def close(self) -> None:
        """Write what is left to the journal and close it. Idempotent."""
        if self._journal is None or self._closing:
            return
        self._closing = True
        self._writer_wake.set()
        if self._writer is not None:
            self._writer.join(30)
        with self._durable_cond:
            self._durable_cond.notify_all()
        self._journal.close()

    # ------------------------------------------------------------------ one change elsewhere

    @classmethod
    def scratch(cls, jobs: Iterable[Job], *, max_logs_per_step: int = 20_000, ordinal: int = 0) -> Store:
        """A store for applying one change to jobs loaded from shared storage (the Redis
        backend): it holds just `jobs` (a manager with its steps, and the children the change
        needs), numbers its events 1, 2, … and keeps them for `take_events()`. The caller
        writes the result where it belongs, atomically, with the seqs it really gets."""
        store = cls(replay_size=16, max_finished=1, max_logs_per_step=max_logs_per_step, recording=True)
        store._ordinals = itertools.count(ordinal)
        for job in jobs:
            store._jobs[job.id] = job
            if job.kind == MANAGER:
                store._managers[job.id] = job
        return store

    def take_events(self) -> list[Event]:
        """The events recorded since the last call, in order (a `scratch` store)."""
        events, self._unwritten = self._unwritten, []
        return events

    def held_jobs(self) -> list[Job]:
        """Every job this store holds (a `scratch` store: what it loaded and what it created)."""
        return list(self._jobs.values())

    # ------------------------------------------------------------------ events

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener()` (outside the lock, from the changing thread) after each change.
        Returns a function that unsubscribes."""
        with self._guard:
            self._listeners = [*self._listeners, listener]

        def unsubscribe() -> None:
            with self._guard:
                self._listeners = [cb for cb in self._listeners if cb is not listener]

        return unsubscribe

    def _notify(self) -> None:
        if self._journal is not None:
            if not self._writer_wake.is_set():  # set() takes a lock: skip it when already set
                self._writer_wake.set()  # listeners hear of it once it is durable (_write_loop)
            return
        self._call_listeners()

    def _call_listeners(self) -> None:
        for listener in self._listeners:
            try:
                listener()
            except Exception:  # one failing listener must not stop the others, nor the job
                token = current_job.set(None)  # its report is not a line of the job's log
                try:
                    logger.exception("stepstream: a store listener raised; the others were still called")
                finally:
                    current_job.reset(token)

    @property
    def storage_error(self) -> str | None:
        """Why storage fails now (the journal's last write), or None; never blocks."""
        return self.journal_error

    def check_storage(self) -> str | None:
        """Why storage cannot be used right now, or None."""
        return self.journal_error

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def journal(self) -> Journal | None:
        return self._journal

    @property
    def visible_seq(self) -> int:
        """The last seq that may be shown: with a journal, the last durable one (so no client
        ever sees a change that a crash could take back); without, the last one."""
        return self._durable if self._journal is not None else self._seq

    def wait_visible(self, seq: int, timeout: float | None = 30) -> bool:
        """Block until `seq` is visible (durable); False on timeout."""
        if self._journal is None or self._durable >= seq:
            return True
        with self._durable_cond:
            return self._durable_cond.wait_for(lambda: self._durable >= seq or self._closing, timeout)

    def _emit(self, type_: str, manager: Job | None, key: str | None, data: dict, manager_id: str = "") -> None:
        self._seq = seq = self._seq + 1
        self.counters[type_] += 1
        data["seq"] = seq
        event = Event(seq, type_, manager.id if manager is not None else manager_id, key, data)
        self._ring[seq % self.replay_size] = event
        if self._recording:
            self._unwritten.append(event)
            if manager is not None:
                self._dirty_managers[manager.id] = manager

    def held_events(self, after: int, limit: int = 10_000) -> tuple[list[Event], int] | None:
        """What `events_after` answers, when the ring holds it (it never blocks: callable on an
        event loop); None when the events must be read from the journal."""
        with self._guard:
            last = self.visible_seq
            if after > last:
                raise Gone(after)
            if after >= max(self._seq - self.replay_size, self._floor):
                end = min(last, after + limit)
                ring, size = self._ring, self.replay_size
                return [ring[s % size] for s in range(after + 1, end + 1)], last  # type: ignore[misc]
        return None

    def events_after(self, after: int, limit: int = 10_000) -> tuple[list[Event], int]:
        """Visible events with seq > `after` in seq order (at most `limit`) and the last visible
        seq. From the ring, or from the journal for older ones. Raises `Gone` if some of them are
        no longer kept, or if `after` is from the future (another store)."""
        held = self.held_events(after, limit)
        if held is not None:
            return held
        last = self.visible_seq
        rows = self._journal.events_after(after, min(limit, last - after)) if self._journal is not None else None
        if not rows:
            raise Gone(after)
        return [Event(seq, type_, manager_id, key, data) for seq, type_, manager_id, key, data in rows], last

    def _emit_status(self, job: Job) -> None:
        self._emit("job_status", job.manager, None, wire.status_event(job))
        if job.kind == CHILD and self._recording:
            self._dirty_children[job.id] = job

    def _emit_progress(self, step: Job) -> None:
        manager = step.manager
        self._emit("step_progress", manager, step.id, {
            "manager_id": manager.id, "step_id": step.id, "step_name": step.name,
            "index": step.index, "status": step.status, "progress": step.progress(),
            "log_count": step.log_count,
        })  # fmt: skip
        self._emit("job_progress", manager, manager.id, {
            "manager_id": manager.id, "status": manager.status, "progress": manager.progress(),
            "log_count": manager.log_count,
        })  # fmt: skip

    # ------------------------------------------------------------------ transitions

    def _set_status(self, job: Job, new: str, now: float) -> None:
        """The one place a status changes; terminal statuses never change again."""
        if not model.can_transition(job.kind, job.status, new):
            raise InvalidTransition(f"{job.kind} {job.id} cannot go from {job.status} to {new}")
        if job.kind == CHILD:
            self.counters[f"child_{new}"] += 1
            for counted in (job.step, job.manager):
                counted.counts[SLOT[job.status]] -= 1
                counted.counts[SLOT[new]] += 1
        job.status = new
        if new == RUNNING:
            job.started_at = now
        elif model.is_terminal(new):
            job.finished_at = now
            if self._waiters:
                self._cond.notify_all()

    def create_manager(
        self,
        definition: str,
        step_names: list[str],
        params: dict,
        *,
        params_json: str | None = None,
        rerun_of: str | None = None,
    ) -> tuple[Job, Job]:
        """A new running manager with its steps; the first step is started. Returns both.
        `params` must already be validated (the orchestrator does it); the store keeps them."""
        now = time.time()
        manager = Job(MANAGER, definition, now)
        manager.definition = definition
        manager.params = params
        manager.rerun_of = rerun_of
        manager.params_json = params_json
        manager.end_seq = None
        manager.manager = manager
        manager.step = None
        manager.index = None
        manager.bucket = LogBucket(self.max_logs_per_step)
        manager.steps = []
        manager.children = []
        manager.cancelled = False
        manager.settled = False
        manager.current = 0
        for index, name in enumerate(step_names):
            step = Job(STEP, name, now)
            step.manager = manager
            step.step = step
            step.parent_id = manager.id
            step.index = index
            step.bucket = LogBucket(self.max_logs_per_step)
            step.handler_returned = False
            step.handler_error = None
            step.handler_traceback = None
            manager.steps.append(step)
        with self._guard:
            manager.ordinal = next(self._ordinals)
            self._jobs[manager.id] = manager
            self._managers[manager.id] = manager
            for step in manager.steps:
                self._jobs[step.id] = step
            self._set_status(manager, RUNNING, now)
            first = manager.steps[0]
            self._set_status(first, RUNNING, now)
            self._emit_status(manager)
            self._append_log(first, "info", f"step {first.name} started", now)
            self._emit_progress(first)
        self._notify()
        return manager, first

    def add_child(
        self,
        fn: Callable[..., Any],
        args: tuple,
        kwargs: dict,
        retries: int,
        *,
        step_id: str | None = None,
        parent_id: str | None = None,
        child_id: str | None = None,
    ) -> Job:
        """A new pending child inside a running step, found by `step_id` or by `parent_id`
        (the step itself or any job already inside it). `child_id`: its id, made beforehand
        (by default a new one)."""
        if (step_id is None) == (parent_id is None):
            raise ValueError("give exactly one of step_id= or parent_id=")
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ValueError(f"retries must be a non-negative int, not {retries!r}")
        now = time.time()
        with self._guard:
            link = self._get(step_id or parent_id)  # type: ignore[arg-type]
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
            child.retries, child.attempt = retries, 1
            self._jobs[child.id] = child
            child.position = len(manager.children)
            manager.children.append(child)
            for counted in (step, manager):
                counted.total += 1
                counted.counts[SLOT[PENDING]] += 1
            self._emit_status(child)
            self._emit_progress(step)
        self._notify()
        return child

    def begin_child(self, child: Job) -> bool:
        """pending -> running. False if the child was cancelled before it got a worker."""
        with self._guard:
            if child.status != PENDING:
                return False
            self._set_status(child, RUNNING, time.time())
            self._emit_status(child)
            self._emit_progress(child.step)
        self._notify()
        return True

    def end_child(
        self, child: Job, error: str | None, traceback: str | None = None, attempt: int | None = None,
        finished_at: float | None = None,
    ) -> tuple[bool, Job | None]:
        """A child's attempt returned (`error` None) or raised (at `finished_at`, by default now).
        Returns (retry, next_step): whether to run the child again, and the step to start next, if
        any. An attempt that was already settled without it (abandoned at shutdown, say) changes
        nothing."""
        now = time.time() if finished_at is None else finished_at
        with self._guard:
            if child.status != RUNNING or (attempt is not None and attempt != child.attempt):
                return False, None
            retry, next_step = self._end_attempt(child, error, traceback, now)
        self._notify()
        return retry, next_step

    def _end_attempt(self, child: Job, error: str | None, traceback: str | None, now: float,
                     retry: bool = True) -> tuple[bool, Job | None]:
        manager = child.manager
        child.error = clean(error) if error is not None else None
        child.traceback = clean(traceback) if traceback is not None else None
        # Attempts lost with their worker do not count against the retries.
        if retry and model.child_retry(error is not None, child.attempt - child.lost, child.retries,
                                       manager.cancelled):
            self._set_status(child, PENDING, now)
            self._append_log(child, "warning", f"{child.name} attempt {child.attempt} of "
                             f"{child.retries + 1} failed, retrying: {child.error}", now)
            child.attempt += 1
            self._emit_status(child)
            self._emit_progress(child.step)
            return True, None
        new = CANCELLED if manager.cancelled else FAILED if error is not None else COMPLETED
        self._set_status(child, new, now)
        if new == FAILED:
            self._append_log(child, "error", _with_traceback(f"{child.name} failed: {child.error}", child.traceback),
                             now)
        self._emit_status(child)
        self._emit_progress(child.step)
        return False, self._maybe_finish_step(child.step, now)

    def lose_attempt(self, child: Job, attempt: int, reason: str) -> bool:
        """The worker running `attempt` of `child` vanished (a shared deployment). The child runs
        again as a new attempt (`model.child_rerun_lost`) or fails with `reason`. True if it runs
        again; False if it failed, or if that attempt had ended anyway."""
        now = time.time()
        with self._guard:
            if child.status != RUNNING or attempt != child.attempt:
                return False
            child.lost = (child.lost or 0) + 1
            if model.child_rerun_lost(child.lost, child.manager.cancelled):
                self._set_status(child, PENDING, now)
                self._append_log(child, "warning", f"{child.name} attempt {child.attempt}: {reason}; "
                                 "running it again", now)
                child.attempt += 1
                self._emit_status(child)
                self._emit_progress(child.step)
                again = True
            else:
                self._end_attempt(child, f"{reason} ({child.lost} times)", None, now, retry=False)
                again = False
        self._notify()
        return again

    def finish_step_if_done(self, step: Job) -> Job | None:
        """Finish a running step whose handler returned and whose children all ended (a change
        that ended its last child elsewhere may not have seen the others end). Returns the step
        to start next, if any."""
        now = time.time()
        with self._guard:
            next_step = self._maybe_finish_step(step, now)
        self._notify()
        return next_step

    def cancel_pending(self, manager_id: str) -> None:
        """Cancel the pending children this store holds of a cancelled manager: `cancel`'s
        work on its children, for a shared deployment, where a manager is cancelled first and
        its pending children then in parts (or by the worker that takes one)."""
        now = time.time()
        with self._guard:
            manager = self._get(manager_id)
            for step in self._cancel_held_pending(manager, now) if manager.cancelled else []:
                self._emit_progress(step)
                self._maybe_finish_step(step, now)
        self._notify()

    def _cancel_held_pending(self, manager: Job, now: float) -> list[Job]:
        """Cancel the pending children of `manager` held here; the steps they were in."""
        steps: dict[str, Job] = {}
        for child in manager.children:
            if child.status == PENDING:
                self._set_status(child, CANCELLED, now)
                self._emit_status(child)
                steps[child.step.id] = child.step
        return list(steps.values())

    def cancelled(self, job: Job) -> bool:
        """True once `job`'s manager was cancelled (what `ctx.cancelled` says)."""
        return job.manager.cancelled

    def handler_returned(self, step: Job, error: str | None, traceback: str | None = None) -> Job | None:
        """The step's handler returned or raised. Returns the step to start next, if any. A
        handler already settled without it (abandoned at shutdown) changes nothing."""
        now = time.time()
        with self._guard:
            if step.handler_returned:
                return None
            next_step = self._handler_done(step, error, traceback, now)
        self._notify()
        return next_step

    def _handler_done(self, step: Job, error: str | None, traceback: str | None, now: float) -> Job | None:
        step.handler_returned = True
        step.handler_error = clean(error) if error is not None else None  # the step's error once it finishes
        step.handler_traceback = clean(traceback) if traceback is not None else None
        if error is not None:
            self._append_log(step, "error", _with_traceback(f"step {step.name} handler raised {step.handler_error}",
                                                            step.handler_traceback), now)
        return self._maybe_finish_step(step, now)

    def abandon(self, manager_id: str, reason: str) -> None:
        """Settle every attempt of a cancelled manager that is still running (code that blocks
        and may never return) with `reason` as its error, so the job reaches its end now. A late
        return of that code is then ignored."""
        now = time.time()
        with self._guard:
            manager = self._get(manager_id)
            if not manager.cancelled or manager.settled:
                return
            for child in manager.children:
                if child.status == RUNNING:
                    self._end_attempt(child, reason, None, now)
            step = manager.steps[manager.current]
            if step.status == RUNNING and not step.handler_returned:
                self._handler_done(step, None, None, now)
                self._append_log(step, "warning", f"step {step.name} handler abandoned: {reason}", now)
        self._notify()

    def _maybe_finish_step(self, step: Job, now: float) -> Job | None:
        if step.status != RUNNING or not model.step_is_done(step.handler_returned, step.counts):
            return None
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
            return None
        outcome = model.manager_outcome(status, step.index == len(manager.steps) - 1)
        if outcome is None:
            manager.current = step.index + 1
            following = manager.steps[manager.current]
            self._set_status(following, RUNNING, now)
            self._emit_status(following)
            self._append_log(following, "info", f"step {following.name} started", now)
            self._emit_progress(following)
            return following
        if outcome == FAILED:
            manager.error = f"step {step.name!r} failed: {step.error}"
            manager.traceback = step.traceback
        self._skip_rest(manager, now)
        self._set_status(manager, outcome, now)
        self._emit_status(manager)
        self._settle(manager)
        return None

    def _skip_rest(self, manager: Job, now: float) -> None:
        for later in manager.steps[manager.current + 1 :]:
            if later.status == PENDING:
                self._set_status(later, SKIPPED, now)
                self._emit_status(later)
                self._emit_progress(later)

    def _settle(self, manager: Job) -> None:
        """Manager and all its steps are terminal: announce `end`, retain or evict."""
        manager.settled = True
        self._emit("end", manager, None, {"manager_id": manager.id, "status": manager.status})
        manager.end_seq = self._seq
        if self._waiters:
            self._cond.notify_all()
        self._finished.append(manager)
        self._evict_finished()

    def _evict_finished(self) -> None:
        """Let go of the oldest finished managers beyond `max_finished`; with a journal, only
        once their final state is durable (from then on they are read from the journal)."""
        while len(self._finished) > self.max_finished:
            oldest = self._finished[0]
            if self._journal is not None and (oldest.end_seq or 0) > self._durable:
                return
            self._evict(self._finished.popleft())

    def _evict(self, manager: Job) -> None:
        self._managers.pop(manager.id, None)
        self._jobs.pop(manager.id, None)
        for job in itertools.chain(manager.steps, manager.children):
            self._jobs.pop(job.id, None)

    def cancel(self, job_id: str) -> Job:
        """Cancel a manager job: pending children become cancelled, running ones see
        `ctx.cancelled`, later steps are skipped. Raises Conflict if it is already terminal."""
        now = time.time()
        with self._guard:
            manager = self._held(job_id)
            if manager is None:
                kept = self._history.manager(job_id, "cancel")  # finished long ago: only the journal holds it
                raise Conflict(f"job {job_id} is already {kept['status']}")
            if manager.kind != MANAGER:
                raise InvalidRequest(f"job {job_id} is a {manager.kind} job; cancel its manager {manager.manager.id}")
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
        self._notify()
        return manager

    def log(self, job_id: str, level: str, message: str) -> Record | None:
        """Store a log line under the job that wrote it and announce it. (Called re-entrantly
        from inside a change, the line is stored just after it, and None is returned.)"""
        model.level_rank(level)
        message = bounded(safe_str(message), MAX_LOG_CHARS)
        if self._guard.held:
            self._guard.defer(job_id, level, message)
            return None
        with self._guard:
            record = self._append_log(self._get(job_id), level, message, time.time())
        self._notify()
        return record

    def _append_log(self, job: Job, level: str, message: str, now: float) -> Record:
        manager, step = job.manager, job.step
        owner = step if step is not None else manager
        record = {
            "seq": self._seq + 1, "ts": iso(now), "level": level, "message": message,
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

    # ------------------------------------------------------------------ reads

    def _get(self, job_id: str) -> Job:
        try:
            return self._jobs[job_id]
        except (KeyError, TypeError):
            raise NotFound(f"no job with id {job_id!r}") from None

    def _delete_kept(self, job_id: str) -> None:
        """Delete a finished manager that only the journal still holds."""
        kept = self._journal.manager_of(job_id) if self._journal is not None and isinstance(job_id, str) else None
        if kept is None or job_id in self._deleted:
            raise NotFound(f"no job with id {job_id!r}")
        if kept != job_id:
            raise InvalidRequest(f"job {job_id} is not a manager job; use its manager {kept}")
        self._emit("job_deleted", None, None, {"manager_id": job_id}, manager_id=job_id)
        self._deleted.append(job_id)

    def _manager(self, job_id: str) -> Job:
        job = self._get(job_id)
        if job.kind != MANAGER:
            raise InvalidRequest(f"job {job_id} is a {job.kind} job; use its manager {job.manager.id}")
        return job

    def definition_and_params(self, job_id: str) -> tuple[str, dict]:
        """What a manager job was started with, to run it again."""
        with self._guard:
            if self._held(job_id) is not None:
                manager = self._manager(job_id)
                return manager.definition, manager.params
        kept = self._history.manager(job_id, "use")
        return kept["definition"], kept["params"]

    def delete(self, job_id: str) -> None:
        """Remove a finished manager job with its steps, children and logs; announce it with a
        `job_deleted` event. Conflict while it runs."""
        with self._guard:
            manager = self._jobs.get(job_id) if isinstance(job_id, str) else None
            if manager is None:
                self._delete_kept(job_id)
            else:
                if manager.kind != MANAGER:
                    raise InvalidRequest(f"job {job_id} is a {manager.kind} job; use its manager {manager.manager.id}")
                if not manager.settled:
                    raise Conflict(f"job {job_id} is still {manager.status}; cancel it first")
                self._emit("job_deleted", manager, None, {"manager_id": manager.id})
                if self._journal is not None:
                    self._dirty_managers.pop(manager.id, None)
                    self._deleted.append(manager.id)
                try:
                    self._finished.remove(manager)
                except ValueError:
                    pass
                self._evict(manager)
        self._notify()

    def get(self, job_id: str) -> Job:
        with self._guard:
            return self._get(job_id)

    def wait(self, job_id: str, timeout: float | None) -> dict:
        """Block until the job is finished (a manager: it and all its steps); its snapshot."""
        with self._guard:
            job = self._held(job_id)
            if job is None:
                return {"seq": self.visible_seq, "job": self._history.job(job_id)}  # finished long ago
            done = (lambda: job.settled) if job.kind == MANAGER else (lambda: model.is_terminal(job.status))
            self._waiters += 1
            try:
                if not self._cond.wait_for(done, timeout):
                    raise TimeoutError(f"job {job_id} still {job.status} after {timeout} s")
            finally:
                self._waiters -= 1
            return {"seq": self._seq, "job": self._job_json(job)}

    def snapshot(self, job_id: str) -> dict:
        """`{"seq", "job"}`: the job as of that seq."""
        with self._guard:
            job = self._held(job_id)
            if job is not None:
                return {"seq": self._seq, "job": self._job_json(job)}
            seq = self.visible_seq
        return {"seq": seq, "job": self._history.job(job_id)}

    def stream_snapshot(self, manager_id: str | None, recent: int = 20) -> tuple[dict, bool]:
        """The first event of a stream: `{"seq", "jobs"}` for one manager, or for the running
        managers and the `recent` most recently finished ones. Also says if that one manager is
        already settled (its stream ends right after the snapshot)."""
        with self._guard:
            now = iso(time.time())
            if manager_id is not None:
                manager = self._held(manager_id)
                if manager is None:
                    seq = self.visible_seq
                else:
                    manager = self._manager(manager_id)
                    return {"seq": self._seq, "time": now, "jobs": [wire.manager_json(manager)]}, manager.settled
            else:
                running = [m for m in self._managers.values() if not m.settled]
                finished = list(itertools.islice(reversed(self._finished), recent))
                held = [(m.ordinal, wire.manager_json(m, params=False)) for m in running + finished]
                seq = self._seq
                if self._journal is None or len(finished) >= recent:
                    return {"seq": seq, "time": now, "jobs": [job for _, job in sorted(held, reverse=True,
                                                                                       key=lambda p: p[0])]}, False
                held_ids = set(self._managers)
        if manager_id is None:  # memory holds fewer finished jobs than asked (after a restart): the journal's
            kept_rows = self._journal.list_managers(  # type: ignore[union-attr]
                status=None, definition=None, q=None, before_ordinal=None, limit=recent + len(held))
            older = [(o, {k: v for k, v in job.items() if k != "params"}) for o, job in kept_rows
                     if job["id"] not in held_ids and model.is_terminal(job["status"])]
            merged = sorted(held + older[: recent - len(finished)], key=lambda p: p[0], reverse=True)
            return {"seq": seq, "time": now, "jobs": [job for _, job in merged]}, False
        kept = self._history.manager(manager_id, "watch")
        return {"seq": seq, "time": now, "jobs": [kept]}, True

    def ended_by(self, manager_id: str, seq: int) -> bool:
        """True if the manager's stream has nothing after `seq`: it had settled by then, or it is
        gone (deleted or evicted) so nothing will ever come."""
        with self._guard:
            manager = self._held(manager_id)
            if manager is not None:
                return manager.kind == MANAGER and manager.end_seq is not None and manager.end_seq <= seq
        end = self._journal.end_seq(manager_id) if self._journal is not None else None
        return end is None or end <= seq

    def stats(self) -> dict:
        """Figures for metrics: the seq, managers by status, and the running totals."""
        # With a journal: finished jobs as written there, unfinished ones as held in memory.
        kept = self._journal.count_by_status() if self._journal is not None else {}
        with self._guard:
            held = collections.Counter(
                m.status for m in self._managers.values() if self._journal is None or not m.settled
            )
            managers = dict(held + collections.Counter(kept))
            return {"seq": self._seq, "managers": managers, "counters": dict(self.counters)}

    def running_managers(self) -> list[str]:
        with self._guard:
            return [m.id for m in self._managers.values() if not model.is_terminal(m.status)]

    def list_managers(
        self,
        status: str | None = None,
        limit: int = 50,
        cursor: int | None = None,
        *,
        definition: str | None = None,
        q: str | None = None,
    ) -> dict:
        """Manager jobs newest first, filtered by status, definition and id prefix `q`; `next`
        is the cursor for the following page or None."""
        with self._guard:
            page: list[Job] = []
            next_cursor = None
            for manager in reversed(self._managers.values()):
                if (
                    (cursor is not None and manager.ordinal >= cursor)
                    or (status is not None and manager.status != status)
                    or (definition is not None and manager.definition != definition)
                    or (q is not None and not manager.id.startswith(q))
                ):
                    continue
                if len(page) == limit:
                    next_cursor = page[-1].ordinal
                    break
                page.append(manager)
            held = [(m.ordinal, wire.manager_json(m, params=False)) for m in page]
            seq = self._seq
        if self._journal is None:
            return {"seq": seq, "jobs": [job for _, job in held], "next": next_cursor}
        # Memory holds every unfinished job and the recent finished ones; the journal all the
        # finished ones. Merge by ordinal, memory winning.
        kept = self._journal.list_managers(status=status, definition=definition, q=q, before_ordinal=cursor,
                                           limit=limit + 1)
        merged = dict(sorted(((o, j) for o, j in kept + held), key=lambda pair: pair[0]))
        merged.update(held)
        ordinals = sorted(merged, reverse=True)
        page_ordinals = ordinals[:limit]
        jobs = [{k: v for k, v in merged[o].items() if k != "params"} for o in page_ordinals]
        return {"seq": seq, "jobs": jobs, "next": page_ordinals[-1] if len(ordinals) > limit else None}

    def children(
        self,
        job_id: str,
        step: str | None = None,
        status: str | None = None,
        limit: int = 100,
        cursor: int = 0,
    ) -> dict:
        """Children of a manager or step in creation order; `cursor` is a position."""
        with self._guard:
            job = self._held(job_id)
            if job is None:
                return self._history.children(job_id, step, status, limit, cursor)
            if job.kind == CHILD:
                raise InvalidRequest(f"job {job_id} is a child job; list children of its step or manager")
            step_job = job if job.kind == STEP else (self._step_named(job, step) if step else None)
            if job.kind == STEP and step is not None and step != job.name:
                raise InvalidRequest(f"step {step!r} is not job {job_id}'s step {job.name!r}")
            found = job.manager.children
            out: list[dict] = []
            position = cursor
            for position in range(cursor, len(found)):
                child = found[position]
                if (step_job is not None and child.step is not step_job) or (
                    status is not None and child.status != status
                ):
                    continue
                if len(out) == limit:
                    return {"children": out, "next": position}
                out.append(wire.child_json(child))
            return {"children": out, "next": None}

    def logs(
        self,
        job_id: str,
        step: str | None = None,
        level: str = "debug",
        after: int = 0,
        limit: int = 1000,
        before: int | None = None,
    ) -> dict:
        """Log lines of a manager (all of it), a step (it and its children) or a child."""
        rank = model.level_rank(level)
        with self._guard:
            job = self._held(job_id)
            if job is None:
                return self._history.logs(job_id, step, rank, after, limit, before)
            only_job = None
            if job.kind == MANAGER:
                if step is not None:
                    buckets: Iterable[LogBucket] = [self._step_named(job, step).bucket]
                else:
                    buckets = [job.bucket] + [s.bucket for s in job.steps]
            else:
                if step is not None and step != job.step.name:
                    raise InvalidRequest(f"job {job_id} belongs to step {job.step.name!r}, not {step!r}")
                buckets = [job.step.bucket]
                only_job = job.id if job.kind == CHILD else None
            records, next_cursor = query(buckets, after=after, before=before, min_level=level,
                                         job_id=only_job, limit=limit)
            return {"logs": records, "next": next_cursor}

    def _held(self, job_id: object) -> Job | None:
        return self._jobs.get(job_id) if isinstance(job_id, str) else None

    def _step_named(self, manager: Job, name: str) -> Job:
        for step in manager.manager.steps:
            if step.name == name:
                return step
        raise NotFound(f"job {manager.manager.id} has no step {name!r}")

    def _job_json(self, job: Job) -> dict:
        return wire.job_json(job)
