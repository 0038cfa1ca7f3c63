"""One reader of the deployment's event stream per process: a thread that tails it with
`XREAD BLOCK`, keeps the newest events in memory for this process's streams and wakes them.

A server's clients never cost a Redis connection each: the hub reads this tail's memory. Events
older than it holds are read from the Redis stream (`XRANGE`); older than the stream keeps, they
are gone (the client gets a fresh snapshot). Entries are decoded here, off the
server's event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from ...events import Event

logger = logging.getLogger("stepstream")


class Tail:
    """Follows `<prefix>events` from the seq Redis had when it started."""

    def __init__(self, client: redis.Redis, key: str, seq_key: str, decode: Callable[[bytes, dict | list], Event],
                 size: int, on_events: Callable[[], None]) -> None:
        # Its own client (same connections) that leaves XREAD's reply as parsed (nested lists):
        # redis-py's own reading of it builds a dict per entry in Python, costlier than the rest.
        self.client = redis.Redis(connection_pool=client.connection_pool)
        self.client.set_response_callback("XREAD", lambda response, **options: response)
        self.key = key
        self.seq_key = seq_key
        self.decode = decode
        self.size = size
        self.on_events = on_events
        self.cond = threading.Condition()
        self.visible = 0  # the last seq this process has read
        self._base = 0  # seq of self._events[0] is _base + 1
        self._events: list[Event] = []
        self._started = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self, wait: bool = True) -> None:
        """Start following (once); with `wait`, return when the starting seq is known (without,
        `on_events` is called once it is)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="stepstream-redis-tail", daemon=True)
                self._thread.start()
        if wait:
            self._started.wait(60)

    @property
    def running(self) -> bool:
        return self._thread is not None

    def stop(self) -> None:
        self._stopping = True

    def _run(self) -> None:
        delay = 0.05
        while not self._stopping:
            try:
                if not self._started.is_set():
                    self.visible = self._base = int(self.client.get(self.seq_key) or 0)
                    self._started.set()
                    self.on_events()
                reply = self.client.xread({self.key: f"{self.visible}-0"}, count=5000, block=1000)
                delay = 0.05
                if not reply:
                    continue
                streams = reply.values() if isinstance(reply, dict) else [entries for _, entries in reply]  # RESP3/2
                fresh = [entry for entries in streams for entry in entries]
                if not fresh:
                    continue
                first, last = _seq(fresh[0][0]), _seq(fresh[-1][0])
                decoded = [self.decode(entry_id, fields) for entry_id, fields in fresh]
            except (redis.ConnectionError, redis.TimeoutError):
                if delay == 0.05:
                    logger.warning("stepstream: lost the connection to Redis; following the events once it is back")
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            except Exception:  # an entry this version cannot read: say so, keep following
                logger.exception("stepstream: reading the event stream failed")
                time.sleep(1.0)
                continue
            with self.cond:
                if first != self.visible + 1:  # trimmed past what we had: start over from here
                    self._events, self._base = [], first - 1
                self._events.extend(decoded)
                excess = len(self._events) - self.size
                if excess > self.size // 4:
                    del self._events[:excess]
                    self._base += excess
                self.visible = last
                self.cond.notify_all()
            self.on_events()

    def held(self, after: int, limit: int) -> list[Event] | None:
        """Events after `after` from memory (at most `limit`), or None if memory does not reach
        back that far."""
        with self.cond:
            if after < self._base or after > self.visible:
                return None
            start = after - self._base
            return self._events[start:start + limit]


def _seq(entry_id: bytes) -> int:
    return int(entry_id.partition(b"-")[0])
