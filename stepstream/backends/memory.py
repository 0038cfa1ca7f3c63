"""The thread-safe store: jobs, transitions, O(1) counters, one seq and the event ring.

Everything that changes state goes through a method of `MemoryStore`, under its one lock. A change
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

from .. import model, queries, wire
from ..engine import Change, Engine, get, require_manager
from ..events import Event, Gone
from ..history import History
from ..jobs import FinishedChildren, Job, child_ids, compact_children, rebuild
from ..journal import Journal
from ..journal.writer import JournalWriter
from ..logbridge import current_job
from ..logs import LogBucket, Record, query
from ..model import CHILD, MANAGER, STEP, Conflict, NotFound, StepstreamError, iso
from ..text import MAX_LOG_CHARS, bounded, safe_str

logger = logging.getLogger("stepstream")

INTERRUPTED_BY_STOP = "interrupted: the server stopped while this job ran"


SPINS = 50  # tries to take the store's lock, yielding the GIL between them, before blocking on it


class _StoreLock:
    """The store's lock, remembering per thread that it is held.

    A change can run arbitrary code while the lock is held (a garbage-collector finaliser that
    logs, say); if that code logs from inside a job, the `logging` bridge would call back into
    the store and deadlock on its own lock. Such lines are kept aside and stored right after
    the lock is released instead.
    """

    __slots__ = ("lock", "owner", "deferred", "store")

    def __init__(self, lock: threading.Condition, store: MemoryStore) -> None:
        self.lock = lock
        self.owner: int | None = None  # the holder's thread id: only the holder sets it, so no
        # other thread ever reads its own id there
        self.deferred: list[tuple[str, str, str]] = []  # lines logged while held (by the holder)
        self.store = store

    @property
    def held(self) -> bool:
        """Whether the calling thread holds the lock."""
        return self.owner == threading.get_ident()

    def __enter__(self) -> None:
        # Taken only while this thread runs (holds the GIL). A blocking acquire would take the lock
        # from the OS while the thread still waits for the GIL: the thread that next wants the
        # lock then blocks too, and every change costs two thread switches (a convoy: worker
        # threads ran no-op children at half the speed of one). When the lock is held, its holder
        # was interrupted mid-change: yield the GIL so that it finishes, and try again; after
        # SPINS tries (a holder that waits on something else), block.
        lock = self.lock
        if not lock.acquire(False):
            for _ in range(SPINS):
                time.sleep(0)
                if lock.acquire(False):
                    break
            else:
                lock.acquire()
        self.owner = threading.get_ident()

    def __exit__(self, *exc: object) -> None:
        deferred = self.deferred
        self.owner = None
        if not deferred:
            self.lock.release()
            return
        self.deferred = []  # this holder's own lines, taken before another thread can take the lock
        self.lock.release()
        for job_id, level, message in deferred:
            try:
                self.store.log(job_id, level, message)
            except NotFound:
                pass  # evicted meanwhile

    def defer(self, job_id: str, level: str, message: str) -> None:
        """Keep a line logged while this thread holds the lock; stored once it lets go."""
        self.deferred.append((job_id, level, message))


class MemoryStore:
    """The memory backend: every job of this process under one lock, a global seq, a bounded
    replay ring of events, and optionally a journal that keeps them across restarts.

    Each change runs the `Engine` under the lock, then writes what it did to the ring (and hands
    it to the journal writer) before the lock is released; listeners are woken after."""

    def __init__(
        self,
        *,
        replay_size: int = 100_000,
        max_finished: int = 1000,
        max_logs_per_step: int = 20_000,
        journal: Journal | None = None,
    ) -> None:
        if replay_size < 16 or max_finished < 1 or max_logs_per_step < 1:
            raise ValueError("replay_size >= 16, max_finished >= 1 and max_logs_per_step >= 1")
        self.store_id = secrets.token_hex(6)  # tells event ids of one store (a database, a run in memory) from another
        self.replay_size = replay_size
        self.max_finished = max_finished
        self.max_logs_per_step = max_logs_per_step
        self._cond = threading.Condition(threading.Lock())
        self._guard = _StoreLock(self._cond, self)
        self._ring: list[Event | None] = [None] * replay_size
        self._jobs: dict[str, Job | FinishedChildren] = {}  # a settled manager's children: its FinishedChildren
        self._engine = Engine(self._jobs, max_logs_per_step=max_logs_per_step, record_jobs=journal is not None)
        self._managers: dict[str, Job] = {}  # creation order
        self._finished: deque[Job] = deque()
        self._settled: list[Job] = []  # settled managers whose children are not yet kept compactly
        self._listeners: list[Callable[[], None]] = []
        self._waiters = 0  # threads in wait(); skip notify_all() when there are none
        self._journal = journal
        self._history = History(journal)
        self._floor = 0  # events up to here were written by an earlier process: not in the ring
        self._writer: JournalWriter | None = None
        self._closed = False
        if journal is not None:
            self._open_journal(journal)

    @property
    def counters(self) -> collections.Counter[str]:
        """Running totals for metrics: events by type, child transitions by status, log lines."""
        return self._engine.counters

    # ------------------------------------------------------------------ the journal

    def _open_journal(self, journal: Journal) -> None:
        """Continue where the journal left off: its store id (event ids stay valid), its seq
        and ordinals; jobs it holds unfinished are rebuilt and settled as interrupted, with
        events like any change. Then the writer thread starts."""
        loaded = journal.load(self.store_id, self.max_logs_per_step)
        self.store_id = loaded.store_id
        self._engine.seq = self._floor = loaded.seq
        self._engine.ordinals = itertools.count(loaded.ordinal + 1)
        self._writer = JournalWriter(journal, self._guard, loaded.seq, self._on_durable)
        for kept in loaded.unsettled:
            with self._guard:
                manager = rebuild(kept, self.max_logs_per_step)
                self._jobs[manager.id] = self._managers[manager.id] = manager
                for job in itertools.chain(manager.steps, manager.children):
                    self._jobs[job.id] = job
                self._engine.interrupt(manager, INTERRUPTED_BY_STOP)
                self._apply()
            self._notify()

    def _on_durable(self) -> None:
        """The writer committed a batch: finished managers may leave memory, listeners hear."""
        with self._guard:
            self._evict_finished()
        self._call_listeners()

    @property
    def journal_error(self) -> str | None:
        """Why writing to the journal fails, while it does (changes then wait, unseen); None."""
        return self._writer.error if self._writer is not None else None

    def close(self) -> None:
        """Write what is left to the journal and close it. Idempotent."""
        if self._writer is None or self._closed:
            return
        self._closed = True
        self._writer.close()

    # ------------------------------------------------------------------ applying changes

    def _apply(self) -> list[Job]:
        """Write what the engine did to the ring (and the journal's next batch); settle and evict
        finished managers. Under the lock. Returns the work that became runnable."""
        change: Change = self._engine.record
        ring, size = self._ring, self.replay_size
        for event in change.events:
            ring[event.seq % size] = event
        if self._writer is not None:
            self._writer.add(change)  # it copies what it keeps
        for manager_id in change.deleted:
            manager = self._managers.get(manager_id)
            if manager is not None:
                self._forget(manager)
        if change.settled:
            self._settled += change.settled  # their children are kept compactly right after (_compact)
            self._finished.extend(change.settled)
            self._evict_finished()
        if change.finished and self._waiters:
            self._cond.notify_all()
        return change.reset()

    def _compact(self) -> None:
        """The children of the managers that settled are kept compactly from now on
        (`FinishedChildren`; read back, each is the same as it was). Outside the lock but for the
        swap: no change touches a settled manager's children any more."""
        with self._guard:
            settled, self._settled = self._settled, []
        for manager in settled:
            children = manager.children
            finished = compact_children(manager)
            if finished is None:
                continue
            with self._guard:
                if manager.children is not children or self._managers.get(manager.id) is not manager:
                    continue  # evicted or deleted meanwhile
                manager.children = finished
                jobs = self._jobs
                for child_id in finished.ids:
                    jobs[child_id] = finished
            del children  # their Job objects are let go of here, outside the lock

    def _forget(self, manager: Job) -> None:
        try:
            self._finished.remove(manager)
        except ValueError:
            pass
        self._evict(manager)

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
        if self._settled:
            self._compact()
        if self._writer is not None:
            self._writer.wake()  # listeners hear of it once it is durable (_on_durable)
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

    check_blocks = False

    def check_storage(self) -> str | None:
        """Why storage cannot be used right now, or None; never blocks."""
        return self.journal_error

    @property
    def seq(self) -> int:
        return self._engine.seq

    @property
    def journal(self) -> Journal | None:
        return self._journal

    @property
    def visible_seq(self) -> int:
        """The last seq that may be shown: with a journal, the last durable one (so no client
        ever sees a change that a crash could take back); without, the last one."""
        return self._writer.durable if self._writer is not None else self._engine.seq

    def wait_visible(self, seq: int, timeout: float | None = 30) -> bool:
        """Block until `seq` is visible (durable); False on timeout."""
        return self._writer is None or self._writer.wait_durable(seq, timeout)

    def held_events(self, after: int, limit: int = 10_000) -> tuple[list[Event], int] | None:
        """What `events_after` answers, when the ring holds it (it never blocks: callable on an
        event loop); None when the events must be read from the journal."""
        with self._guard:
            last = self.visible_seq
            if after > last:
                raise Gone(after)
            if after >= max(self._engine.seq - self.replay_size, self._floor):
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

    # ------------------------------------------------------------------ commands

    def create_manager(self, definition: str, step_names: list[str], params: dict, *,
                       params_json: str | None = None, rerun_of: str | None = None) -> tuple[Job, list[Job]]:
        """A new running manager with its steps, the first one started. Returns it and the work
        to run (the first step's handler). `params` must already be validated."""
        with self._guard:
            manager, _ = self._engine.create_manager(definition, step_names, params, params_json=params_json,
                                                     rerun_of=rerun_of)
            self._managers[manager.id] = manager
            runnable = self._apply()
        self._notify()
        return manager, runnable

    def add_child(self, fn: Callable[..., Any], args: tuple, kwargs: dict, retries: int, *,
                  step_id: str | None = None, parent_id: str | None = None) -> tuple[Job, list[Job]]:
        """A new pending child inside a running step, found by `step_id` or by `parent_id` (the
        step itself or any job already inside it); and the work to run (the child)."""
        try:
            with self._guard:
                child = self._engine.add_child(fn, args, kwargs, retries, step_id=step_id, parent_id=parent_id)
                runnable = self._apply()
        except NotFound:
            link = step_id if step_id is not None else parent_id
            if self._journal is not None and isinstance(link, str):
                self._refuse_kept_link(link)
            raise
        self._notify()
        return child, runnable

    def _refuse_kept_link(self, link: str) -> None:
        """A spawn into a job that only the journal holds (finished long ago): as the engine
        refuses a spawn into a finished step."""
        try:
            kept = self._history.job(link)
        except NotFound:
            return  # the engine says it
        if kept["kind"] == MANAGER:
            return
        manager = self._history.job(kept["manager_id"])
        step = next(s for s in manager["steps"] if s["id"] == kept["step_id"])
        raise Conflict(f"step {step['name']!r} of job {manager['id']} is {step['status']}; it takes no new children")

    def _change(self, apply: Callable[[Engine], Any]) -> tuple[Any, list[Job]]:
        """Apply one change with the engine under the lock; its result and the runnable work."""
        with self._guard:
            result = apply(self._engine)
            runnable = self._apply()
        self._notify()
        return result, runnable

    def begin_child(self, child: Job) -> bool:
        """pending -> running. False if the child was cancelled before it got a worker."""
        with self._guard:  # the hot path: written out rather than through _change
            began = self._engine.begin_child(child)
            self._apply()
        self._notify()
        return began

    def end_child(self, child: Job, error: str | None, traceback: str | None = None,
                  attempt: int | None = None) -> list[Job]:
        """A child's attempt returned (`error` None) or raised. Returns the work to run next (a
        retry, the next step's handler). A late return of a settled attempt changes nothing."""
        with self._guard:
            self._engine.end_child(child, error, traceback, attempt)
            runnable = self._apply()
        self._notify()
        return runnable

    def handler_returned(self, step: Job, error: str | None, traceback: str | None = None) -> list[Job]:
        """The step's handler returned or raised. Returns the work to run next."""
        return self._change(lambda engine: engine.handler_returned(step, error, traceback))[1]

    def cancelled(self, job: Job) -> bool:
        """True once `job`'s manager was cancelled (what `ctx.cancelled` says)."""
        return job.manager.cancelled

    def cancel_for_shutdown(self) -> list[str]:
        """This process stops, and its jobs with it: cancel the running managers; their ids."""
        running = self.running_managers()
        for manager_id in running:
            try:
                self.cancel(manager_id)
            except StepstreamError:
                pass  # finished meanwhile
        return running

    def abandon(self, manager_id: str, reason: str) -> None:
        """Settle every attempt of a cancelled manager that is still running (code that blocks
        and may never return) with `reason` as its error, so the job reaches its end now."""
        self._change(lambda engine: engine.abandon(manager_id, reason))

    def _evict_finished(self) -> None:
        """Let go of the oldest finished managers beyond `max_finished`; with a journal, only
        once their final state is durable (from then on they are read from the journal)."""
        while len(self._finished) > self.max_finished:
            oldest = self._finished[0]
            if self._writer is not None and (oldest.end_seq or 0) > self._writer.durable:
                return
            self._evict(self._finished.popleft())

    def _evict(self, manager: Job) -> None:
        self._managers.pop(manager.id, None)
        jobs = self._jobs
        jobs.pop(manager.id, None)
        for job_id in itertools.chain((s.id for s in manager.steps), child_ids(manager)):
            jobs.pop(job_id, None)

    def cancel(self, job_id: str) -> Job:
        """Cancel a manager job: pending children become cancelled, running ones see
        `ctx.cancelled`, later steps are skipped. Raises Conflict if it is already terminal."""
        with self._guard:
            if self._held(job_id) is None:
                kept = self._history.manager(job_id, "cancel")  # finished long ago: only the journal holds it
                raise Conflict(f"job {job_id} is already {kept['status']}")
            manager = self._engine.cancel(job_id)
            self._apply()
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
        return self._change(lambda engine: engine.log(job_id, level, message))[0]

    # ------------------------------------------------------------------ reads

    def _get(self, job_id: str) -> Job:
        return get(self._jobs, job_id)

    def _manager(self, job_id: str) -> Job:
        return require_manager(self._get(job_id))

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
        kept = None
        if self._held(job_id) is None:  # finished long ago: only the journal holds it
            kept = self._history.manager(job_id, "use")
        with self._guard:
            if self._held(job_id) is not None:
                self._engine.delete(job_id)
            elif kept is None or self._writer is None or self._writer.deleting(job_id):
                raise NotFound(f"no job with id {job_id!r}")
            else:
                self._engine.deleted(job_id)
            self._apply()
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
            return {"seq": self._engine.seq, "job": self._job_json(job)}

    def snapshot(self, job_id: str) -> dict:
        """`{"seq", "job"}`: the job as of that seq."""
        with self._guard:
            job = self._held(job_id)
            if job is not None:
                return {"seq": self._engine.seq, "job": self._job_json(job)}
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
                    return {"seq": self._engine.seq, "time": now, "jobs": [wire.manager_json(manager)]}, manager.settled
            else:
                running = [m for m in self._managers.values() if not m.settled]
                finished = list(itertools.islice(reversed(self._finished), recent))
                held = [(m.ordinal, wire.manager_json(m, params=False)) for m in running + finished]
                seq = self._engine.seq
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
        with self._guard:
            held = collections.Counter(m.status for m in self._managers.values())
            held_ids = list(self._managers)
            seq, counters = self._engine.seq, dict(self.counters)
        # Every manager held in memory as held; the journal's finished ones that memory let go of.
        kept = self._journal.count_by_status(exclude=held_ids) if self._journal is not None else {}
        return {"seq": seq, "managers": dict(held + collections.Counter(kept)), "counters": counters}

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
                    or (q is not None and not queries.search_matches(q, manager.id, manager.definition))
                ):
                    continue
                if len(page) == limit:
                    next_cursor = page[-1].ordinal
                    break
                page.append(manager)
            held = [(m.ordinal, wire.manager_json(m, params=False)) for m in page]
            seq = self._engine.seq
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
            queries.check_children_request(job_id, job.kind, job.step.name if job.step else None, step)
            step_job = job if job.kind == STEP else (self._step_named(job, step) if step else None)
            found = job.manager.children
            out: list[dict] = []
            if isinstance(found, FinishedChildren):  # a settled manager's: chosen by their kept codes
                for position in found.positions(step_job, status, cursor):
                    if len(out) == limit:
                        return {"children": out, "next": position}
                    out.append(wire.child_json(found.child(position)))
                return {"children": out, "next": None}
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
        q: str | None = None,
    ) -> dict:
        """Log lines of a manager (all of it), a step (it and its children) or a child; `q`: only
        the lines that contain it (`logs.line_matches`)."""
        rank = model.level_rank(level)
        with self._guard:
            job = self._held(job_id)
            if job is None:
                return self._history.logs(job_id, step, rank, after, limit, before, q)
            only_job = None
            if job.kind == MANAGER:
                if step is not None:
                    buckets: Iterable[LogBucket] = [self._step_named(job, step).bucket]
                else:
                    buckets = [job.bucket] + [s.bucket for s in job.steps]
            else:
                queries.check_logs_request(job_id, job.kind, job.step.name, step)
                buckets = [job.step.bucket]
                only_job = job.id if job.kind == CHILD else None
            records, next_cursor = query(buckets, after=after, before=before, min_level=level,
                                         job_id=only_job, limit=limit, text=q)
            return {"logs": records, "next": next_cursor}

    def _held(self, job_id: object) -> Job | None:
        job = self._jobs.get(job_id) if isinstance(job_id, str) else None
        return job.find(job_id) if type(job) is FinishedChildren else job  # type: ignore[arg-type]

    @staticmethod
    def _step_named(manager: Job, name: str) -> Job:
        return queries.step_named(manager.manager.id, manager.manager.steps, name, lambda s: s.name)

    def _job_json(self, job: Job) -> dict:
        return wire.job_json(job)
