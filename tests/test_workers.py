"""The worker pool: every call runs, and a call never waits for a busy thread while the pool may
still grow (its threads take no lock between calls, so this is checked under races)."""

from __future__ import annotations

import threading

import pytest

from harness.processes import until
from stepstream.workers import WorkerPool

pytestmark = pytest.mark.timeout(120)


def test_calls_that_block_each_get_a_thread_up_to_the_size_and_the_rest_wait():
    pool = WorkerPool(4)
    release = threading.Event()
    started: list[int] = []
    try:
        for n in range(6):
            pool.submit(lambda n=n: (started.append(n), release.wait(30)))
        until(lambda: len(started) == 4, what="four calls running at once")
        assert pool.busy() == 4 and sorted(started) == [0, 1, 2, 3]
        release.set()
        until(lambda: len(started) == 6 and pool.busy() == 0, what="the other two run once threads are free")
    finally:
        release.set()
        pool.shutdown()


def _hold(running: threading.Semaphore, release: threading.Event) -> None:
    running.release()
    release.wait(30)


@pytest.mark.parametrize("size", [2, 8])
def test_under_a_stream_of_quick_calls_a_blocking_one_never_holds_back_the_next(size):
    """Rounds of: many quick calls (threads finish and take calls as they are submitted), then
    `size` calls that block until all of them run: each round ends only if no call waited for a
    busy thread while the pool could start one."""
    for _ in range(30):
        pool = WorkerPool(size)
        running = threading.Semaphore(0)
        release = threading.Event()
        done = []
        try:
            for _ in range(200):
                pool.submit(done.append, 1)
            for _ in range(size):
                pool.submit(_hold, running, release)
            for _ in range(size):
                assert running.acquire(timeout=10), "a call waited for a busy thread"
            release.set()
            until(lambda done=done: len(done) == 200, what="every quick call ran")
        finally:
            release.set()
            pool.shutdown()


def test_a_call_after_shutdown_is_refused():
    pool = WorkerPool(2)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(print)


class _PausingQueue:
    """The pool's queue, with the first taker paused right after it took its call (as a thread
    switch there would), until `resume` is set."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.paused = threading.Event()
        self.resume = threading.Event()

    def get(self):
        item = self.inner.get()
        if item is not None and not self.paused.is_set():
            self.paused.set()
            self.resume.wait(30)
        return item

    def put(self, item) -> None:
        self.inner.put(item)

    def qsize(self) -> int:
        return self.inner.qsize()


def test_a_call_submitted_while_a_thread_is_taking_another_still_gets_a_thread_of_its_own():
    """A thread that took a call but has not yet said it is busy looks idle to `submit`, which
    then starts no thread for the next call: that thread, once it says so, starts one."""
    pool = WorkerPool(2)
    pool._queue = _PausingQueue(pool._queue)
    release = threading.Event()
    second = threading.Event()
    try:
        pool.submit(release.wait, 30)  # the first thread takes it, and is paused
        assert pool._queue.paused.wait(10)
        pool.submit(second.set)
        pool._queue.resume.set()
        assert second.wait(10), "the second call waited for the first, with a thread to spare"
    finally:
        release.set()
        pool._queue.resume.set()
        pool.shutdown()
