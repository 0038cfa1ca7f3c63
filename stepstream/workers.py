"""The thread pool that runs plain `def` handlers and children.

Unlike `concurrent.futures.ThreadPoolExecutor`, whose threads the interpreter joins at exit, these
are daemon threads: code that blocks forever cannot keep the process from stopping. The
orchestrator settles what such code was doing before it lets go of it (`MemoryStore.abandon`).

A worker thread takes no lock between two calls: it says whether it is busy in a slot of its
own, so many short calls (no-op children) do not queue the workers behind the thread that
submits them. The lock guards only submitting and starting threads.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("stepstream")


class WorkerPool:
    """At most `size` daemon threads taking `fn(*args)` calls from one queue, started on demand:
    a call that no idle thread will take starts one, until there are `size`."""

    def __init__(self, size: int, name: str = "stepstream-worker") -> None:
        self.size = size
        self.name = name
        self._queue: queue.SimpleQueue[tuple[Callable[..., Any], tuple] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._busy: list[bool] = []  # one slot per thread, written by that thread alone
        self._closed = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue a call; RuntimeError once the pool is shut down."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker pool is shut down")
            self._queue.put((fn, args))
            if self._short_of_threads():
                self._start_thread()

    def busy(self) -> int:
        """How many of the threads run a call now."""
        return sum(self._busy)

    def _short_of_threads(self) -> bool:
        """More calls wait than there are threads waiting for one, and the pool may grow."""
        threads = len(self._threads)
        return threads < self.size and self._queue.qsize() > threads - sum(self._busy)

    def _start_thread(self) -> None:
        """Under the lock."""
        index = len(self._threads)
        self._busy.append(False)
        thread = threading.Thread(target=self._work, args=(index,), name=f"{self.name}-{index}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _work(self, index: int) -> None:
        busy = self._busy
        while True:
            item = self._queue.get()
            busy[index] = True
            # A call submitted while this thread was between get() and the line above counted it
            # as waiting: if that left a call with no thread to take it, start one now.
            if self._short_of_threads():
                with self._lock:
                    if not self._closed and self._short_of_threads():
                        self._start_thread()
            if item is None:
                busy[index] = False
                return
            fn, args = item
            try:
                fn(*args)
            except BaseException:  # noqa: BLE001 - the worker outlives any call
                logger.exception("stepstream: a worker call raised")
            busy[index] = False

    def shutdown(self, wait: bool = True, timeout: float | None = None) -> None:
        """Take no more calls; let the threads end once the queue is drained (with `wait`, join
        them, at most `timeout` seconds). Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                for _ in self._threads:
                    self._queue.put(None)
            threads = list(self._threads)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join(timeout)
