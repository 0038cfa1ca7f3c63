"""Spawns committed in batches: a loop of `ctx.spawn` costs one Redis commit per batch, not one
per child.

A thread's first spawn on a link (the step or job it spawns into) is committed at once, so a
spawn into a job that takes none fails where it is called. After that, its spawns on that link
are queued and return their child's id at once, and one thread commits what has queued, in order,
while the caller goes on: a batch is what queued while the commit before it was on its way, so a
slow loop commits each spawn alone and a fast one in batches of up to `MAX_BATCH`.

Anything else the thread then does through the store (a log line, a read, its handler's return,
a spawn on another link) first waits until its spawns are committed, so everything is seen in the
order it was done (a child can be read as soon as its spawn returned) and a step never finishes
before the children its handler spawned exist. A batch that cannot be committed (the job was
cancelled meanwhile, say) drops the spawns queued after it, and its error is raised in the thread
at its next spawn, or fails its attempt when its code returns.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("stepstream")

MAX_BATCH = 200  # spawns per commit: bounds one commit's time in Redis
MAX_QUEUED = 2 * MAX_BATCH  # a thread ahead of its commits by this many waits for them


@dataclass(frozen=True)
class Spawn:
    """One queued spawn: the child's id (made beforehand) and its call."""

    child_id: str
    name: str
    fn: Callable[..., Any]
    args: tuple
    kwargs: dict
    retries: int
    step_id: str | None
    parent_id: str | None


class SpawnBatch:
    """A thread's spawns on one link, and the jobs its last commit left (for the next one)."""

    def __init__(self, link: str, known: Any) -> None:
        self.link = link
        self.known = known
        self.queue: list[Spawn] = []
        self.busy = False  # queued for, or being committed by, the committing thread
        self.done = threading.Event()
        self.done.set()
        self.error: BaseException | None = None


class Spawner:
    """Batches of every thread of a process, committed by one thread with `commit(batch, spawns)`
    (which updates `batch.known`)."""

    def __init__(self, commit: Callable[[SpawnBatch, list[Spawn]], None]) -> None:
        self._commit = commit
        self._local = threading.local()
        self._lock = threading.Lock()
        self._ready: queue.SimpleQueue[SpawnBatch | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._busy: set[SpawnBatch] = set()
        self._idle = threading.Condition(self._lock)
        self._room = threading.Condition(self._lock)

    def batch(self, link: str) -> SpawnBatch | None:
        """This thread's batch on `link`, if it has one; its spawns on another link are settled
        first (their error raised)."""
        batch: SpawnBatch | None = getattr(self._local, "batch", None)
        if batch is not None and batch.link != link:
            self.settle()
            return None
        if batch is not None and batch.error is not None:
            self.settle()  # raises
        return batch

    def begin(self, link: str, known: Any) -> None:
        """This thread's next spawns on `link` are queued, starting from `known`."""
        self._local.batch = SpawnBatch(link, known)

    def add(self, batch: SpawnBatch, spawn: Spawn) -> None:
        """Queue a spawn; wait while the thread is `MAX_QUEUED` ahead of its commits (so a loop
        that spawns faster than Redis takes them is held back, and a batch that fails drops
        few); a failed batch's error is raised here."""
        with self._lock:
            self._room.wait_for(lambda: len(batch.queue) < MAX_QUEUED or batch.error is not None)
            if batch.error is not None:
                error, self._local.batch = batch.error, None
                raise error
            batch.queue.append(spawn)
            if batch.busy:
                return  # the committing thread takes it with the others
            batch.busy = True
            batch.done.clear()
            self._busy.add(batch)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="stepstream-redis-spawns", daemon=True)
                self._thread.start()
        self._ready.put(batch)

    def wait(self) -> None:
        """Wait until this thread's queued spawns are committed (or failed: the error is kept
        for its next spawn or its code's return)."""
        batch: SpawnBatch | None = getattr(self._local, "batch", None)
        if batch is not None:
            batch.done.wait()

    def settle(self, *, raise_error: bool = True) -> BaseException | None:
        """Wait until this thread's queued spawns are committed. Their error, if a batch failed:
        raised (or returned); the thread then starts afresh."""
        batch: SpawnBatch | None = getattr(self._local, "batch", None)
        if batch is None:
            return None
        batch.done.wait()
        error = batch.error
        if error is not None:
            self._local.batch = None
            if raise_error:
                raise error
        return error

    def _run(self) -> None:
        while True:
            batch = self._ready.get()
            if batch is None:
                return
            with self._lock:
                spawns = batch.queue[:MAX_BATCH]
                del batch.queue[:MAX_BATCH]
                self._room.notify_all()
            try:
                self._commit(batch, spawns)
            except BaseException as exc:  # noqa: BLE001 - handed to the spawning thread
                if not isinstance(exc, Exception):
                    logger.warning("stepstream: committing spawns stopped: %r", exc)
                with self._lock:
                    batch.error = exc
                    batch.queue.clear()
                    self._room.notify_all()
            with self._lock:
                if batch.queue:
                    self._ready.put(batch)  # the others' batches first, then the rest of this one
                    continue
                batch.busy = False
                batch.done.set()
                self._busy.discard(batch)
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait (at most `timeout` seconds) until every queued spawn is committed."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._busy, timeout)
