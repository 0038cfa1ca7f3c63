"""The thread pool that runs plain `def` handlers and children.

Unlike `concurrent.futures.ThreadPoolExecutor`, whose threads the interpreter joins at exit, these
are daemon threads: code that blocks forever cannot keep the process from stopping. The
orchestrator settles what such code was doing before it lets go of it (`MemoryStore.abandon`).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("stepstream")


class WorkerPool:
    """At most `size` daemon threads taking `fn(*args)` calls from one queue, started on demand."""

    def __init__(self, size: int, name: str = "stepstream-worker") -> None:
        self.size = size
        self.name = name
        self._queue: queue.SimpleQueue[tuple[Callable[..., Any], tuple] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._closed = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue a call; RuntimeError once the pool is shut down."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker pool is shut down")
            self._queue.put((fn, args))
            if self._idle <= 0 and len(self._threads) < self.size:
                thread = threading.Thread(target=self._work, name=f"{self.name}-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
            else:
                self._idle -= 1  # an idle thread takes it; below zero, the backlog

    def busy(self) -> int:
        """How many of the threads run a call now (a call handed to a thread counts at once)."""
        with self._lock:
            return len(self._threads) - max(self._idle, 0)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)
            except BaseException:  # noqa: BLE001 - the worker outlives any call
                logger.exception("stepstream: a worker call raised")
            with self._lock:
                self._idle += 1

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
