"""The Redis deployment's runner: worker threads that take work from the shared queue and run it.

Work is made runnable by the commits of any process (a step's handler, a child's attempt) and
waits in Redis's `work` stream; a consumer thread takes what this process has room for, and each
worker thread, once its work ends, takes its own next work. Short children are taken and ended
in batches (docs/architecture.md, "Short children"). Attempts run through the same `Attempts`
as everywhere else.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ...attempt import Attempts
from ...jobs import Job
from ...runner import EventLoopThread
from ...workers import WorkerPool
from .store import RedisStore

SHORT_CHILD = 0.01  # seconds: queued children this quick are taken and ended in batches
CHILD_BATCH = 8  # at most this many at once, or as many as run in `SHORT_CHILD` together
MAX_CHILD_BATCH = 32  # and never more than this many (one commit's guards, one worker's share)

logger = logging.getLogger("stepstream")


class RedisWorker:
    """Runs queued work with `max_workers` threads of this process (0: runs none)."""

    def __init__(self, attempts: Attempts, store: RedisStore, max_workers: int) -> None:
        self.attempts = attempts
        self.store = store
        self.max_workers = max_workers
        self.pool = WorkerPool(max(max_workers, 1))
        self.loop = EventLoopThread()
        self.closed = threading.Event()
        self._capacity = threading.Condition()
        self._busy = 0  # queued work running here
        self._took: dict[str, float] = {}  # child function name: seconds its last run here took
        self._consumer: threading.Thread | None = None
        if max_workers > 0:
            self._consumer = threading.Thread(target=self._consume, name="stepstream-redis-work", daemon=True)
            self._consumer.start()

    def workers(self) -> dict:
        """This process's worker threads and the queued work running on them: other processes
        of the deployment may have workers too (one server does not know them)."""
        return {"size": self.max_workers, "busy": min(self._busy, self.max_workers), "scope": "process"}

    def submit(self, jobs: list[Job]) -> None:
        """Nothing to do: what a change made runnable was queued in Redis by its commit."""

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
        fn = self.attempts.function(job)
        if inspect.iscoroutinefunction(fn):
            future = self.loop.run(self._run_async(job, fn))
            future.add_done_callback(lambda _: self._queued_done(entry))
        else:
            self.pool.submit(self._run_then_done, entry, job, fn)

    async def _run_async(self, job: Job, fn: Callable[..., Any]) -> None:
        outcome = await self.attempts.call_async(job, fn)
        if outcome is not None:
            self.attempts.end(job, *outcome)

    def _run_then_done(self, entry: Any, job: Job, fn: Callable[..., Any]) -> None:
        """Run queued work on this thread, then the work its end took, while there is some.

        After a short child (under `SHORT_CHILD` seconds), `CHILD_BATCH` to `MAX_CHILD_BATCH`
        children are taken at once (`_batch`): they begin together, run one after the other here,
        and their ends are committed together with the next batch's start, while they stay short:
        one Redis commit for them all instead of one each (see docs/architecture.md, "Short children")."""
        held = [(entry, job)]  # begun, to run here, in order
        ended: list[tuple] = []  # children that returned here, their end not committed yet
        try:
            while held:
                entry, job = held.pop(0)
                fn = self.attempts.function(job)
                if job.kind != "child" or inspect.iscoroutinefunction(fn):
                    self._end_held(ended, 0)
                    self._run_elsewhere(entry, job, fn)
                    continue
                if ended and not self._short(job.fn):
                    self._end_held(ended, 0)  # this one may take long: the others' ends go first
                started = time.monotonic()
                outcome = self.attempts.call(job, fn)
                if outcome is None:
                    self.store.done_work(entry)
                    continue
                self._took[job.fn] = time.monotonic() - started
                short = self._short(job.fn)
                attempt, error, traceback = outcome
                ended.append((job, attempt, self.store.settle_spawns(error), traceback, time.time()))
                if held and short:
                    continue  # it ends with the rest of its batch
                want = 0 if self.closed.is_set() or held else self._batch(job.fn) if short else 1
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
        return self.store.end_and_take(batch, want, lambda child: self._short(child.fn))

    def _short(self, fn: str) -> bool:
        """Whether the child function `fn` ran under `SHORT_CHILD` here last time."""
        return self._took.get(fn, SHORT_CHILD) < SHORT_CHILD

    def _batch(self, fn: str) -> int:
        """How many children to take after one of `fn` that was short: as many as its last run's
        time fits into `SHORT_CHILD`, from `CHILD_BATCH` to `MAX_CHILD_BATCH`."""
        fits = int(SHORT_CHILD / max(self._took.get(fn, SHORT_CHILD), 1e-6))
        return max(CHILD_BATCH, min(MAX_CHILD_BATCH, fits))

    def _run_elsewhere(self, entry: Any, job: Job, fn: Callable[..., Any]) -> None:
        """A step's handler (on this thread) or an async function (on the event loop), on a
        place of its own."""
        if inspect.iscoroutinefunction(fn):
            with self._capacity:
                self._busy += 1
            future = self.loop.run(self._run_async(job, fn))
            future.add_done_callback(lambda _: self._queued_done(entry))
            return
        outcome = self.attempts.call(job, fn)
        if outcome is not None:
            self.attempts.end(job, *outcome)
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

    def shutdown(self, wait: bool, abandon: Callable[[], None]) -> None:
        """Stop taking work; jobs go on (other processes run them). With `wait`, let what runs
        here end; without, hand it back at once (a child runs again elsewhere, a step handler's
        step fails: see docs/architecture.md). `abandon` is not needed: nothing is settled here."""
        self.closed.set()
        if self._consumer is not None:
            self._consumer.join(5)
        self.pool.shutdown(wait=wait)
        if wait:
            with self._capacity:
                self._capacity.wait_for(lambda: self._busy == 0, 30)
        else:
            self.store.release_work("its worker process stopped")
        self.loop.stop(wait=False)
