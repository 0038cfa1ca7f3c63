"""The journal writer: one thread that commits what the memory backend changed, in batches.

Changes are handed over under the backend's lock (`add`); the thread wakes, takes everything
unwritten under that same lock (a consistent cut at one seq: the events, and the latest JSON of
each manager and child that changed) and commits it in one transaction. What piles up during one
commit goes into the next (group commit), so the cost per change falls as the load grows. Only
then does `durable` move and `on_durable` run: nothing is shown that a crash could take back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from .. import wire
from ..engine import Change
from ..jobs import Job
from ..text import describe
from . import Batch, Journal

logger = logging.getLogger("stepstream")

COMMIT_INTERVAL = 0.005  # seconds between the starts of two journal commits, at least


class JournalWriter:
    """Writes changes to `journal` from a thread of its own. `lock` is the holder's lock (the
    batch is cut under it); `on_durable()` runs on the writer thread after each commit."""

    def __init__(self, journal: Journal, lock: AbstractContextManager, durable: int,
                 on_durable: Callable[[], None]) -> None:
        self.journal = journal
        self.lock = lock
        self.on_durable = on_durable
        self.durable = durable  # the last seq the journal committed
        self.error: str | None = None  # why the last write failed, while it fails
        self._durable_cond = threading.Condition(threading.Lock())
        self._events: list = []
        self._managers: dict[str, Job] = {}
        self._children: dict[str, Job] = {}
        self._deleted: list[str] = []
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="stepstream-journal", daemon=True)
        self._thread.start()

    def add(self, change: Change) -> None:
        """Keep what `change` did for the next commit. Call under `lock`."""
        self._events += change.events
        self._managers.update(change.managers)
        self._children.update(change.children)
        for manager_id in change.deleted:
            self._managers.pop(manager_id, None)
            self._deleted.append(manager_id)

    def wake(self) -> None:
        if not self._wake.is_set():  # set() takes a lock: skip it when already set
            self._wake.set()

    def wait_durable(self, seq: int, timeout: float | None = 30) -> bool:
        """Block until `seq` is durable; False on timeout."""
        if self.durable >= seq:
            return True
        with self._durable_cond:
            return self._durable_cond.wait_for(lambda: self.durable >= seq or self._closing, timeout)

    def _run(self) -> None:
        last_commit = 0.0
        while True:
            if not self._closing:
                self._wake.wait()
                # Fewer, bigger commits under load: each one rewrites whole pages of the WAL.
                pause = last_commit + COMMIT_INTERVAL - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            self._wake.clear()
            last_commit = time.monotonic()
            with self.lock:
                taken = self._take()
            if taken is None:
                if self._closing:
                    return
                continue
            batch, managers, children = taken
            try:
                self.journal.write(batch)
            except Exception as exc:  # the changes stay unwritten (and unseen); they go with the next batch
                if self.error is None:
                    logger.exception("stepstream: writing to the journal failed; retrying every second")
                self.error = describe(exc)[0]
                if self._closing:  # nobody saw these changes (never visible); say what is not kept
                    logger.error("stepstream: closing with %d changes not written to the journal", len(batch.events))
                    return
                with self.lock:
                    self._put_back(batch, managers, children)
                time.sleep(1.0)
                self._wake.set()
                continue
            if self.error is not None:
                logger.warning("stepstream: writing to the journal works again")
                self.error = None
            with self._durable_cond:
                self.durable = max(self.durable, batch.last_seq)
                self._durable_cond.notify_all()
            self.on_durable()

    def _take(self) -> tuple[Batch, dict[str, Job], dict[str, Job]] | None:
        if not self._events and not self._deleted:
            return None
        events, self._events = self._events, []
        managers, self._managers = self._managers, {}
        children, self._children = self._children, {}
        deleted, self._deleted = self._deleted, []
        # What each child is now, taken under the lock; its JSON is made after, as the row is
        # written (off the lock).
        child_rows = [(c.id, c.manager.id, c.step.id, c.position, c.status, wire.child_fields(c))
                      for c in children.values()]
        batch = Batch(
            events=events,
            managers=[(m.id, m.ordinal, m.definition, m.status, m.settled, m.end_seq, wire.manager_json(m),
                       [step.id for step in m.steps]) for m in managers.values()],
            children=((*row[:5], wire.child_json_of(row[5])) for row in child_rows),
            deleted=deleted,
        )
        return batch, managers, children

    def _put_back(self, batch: Batch, managers: dict[str, Job], children: dict[str, Job]) -> None:
        """A batch that could not be written goes first into the next one."""
        self._events[:0] = batch.events
        self._deleted[:0] = batch.deleted
        self._managers = {**{i: m for i, m in managers.items() if i not in self._deleted}, **self._managers}
        self._children = {**children, **self._children}

    def close(self) -> None:
        """Write what is left and close the journal."""
        self._closing = True
        self._wake.set()
        self._thread.join(30)
        with self._durable_cond:
            self._durable_cond.notify_all()
        self.journal.close()

    def deleting(self, manager_id: str) -> bool:
        """True while the deletion of `manager_id` waits to be written. Call under `lock`."""
        return manager_id in self._deleted
