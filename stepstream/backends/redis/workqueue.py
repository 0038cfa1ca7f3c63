"""Work for any worker process: a Redis stream read through one consumer group.

An entry names a step whose handler is to run, or a child attempt. A worker takes entries with
`XREADGROUP`, acknowledges each (`XACK`, then `XDEL`: the stream keeps only what is not done)
once its change is committed, and keeps what it runs claimed (a heartbeat `XCLAIM`s them, which
resets their idle time). An entry idle longer than the visibility timeout belonged to a worker
that vanished: another worker takes it over with `XAUTOCLAIM` as a redelivery.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass

import redis

logger = logging.getLogger("stepstream")

GROUP = "workers"


@dataclass(frozen=True)
class Entry:
    id: bytes
    kind: str  # "step" (its handler) or "child" (an attempt)
    job_id: str
    attempt: int
    redelivered: bool = False


def _entry(entry_id: bytes, fields: dict, redelivered: bool) -> Entry | None:
    try:
        return Entry(entry_id, fields[b"k"].decode(), fields[b"j"].decode(), int(fields[b"a"]), redelivered)
    except (KeyError, ValueError, UnicodeDecodeError):
        return None


class WorkQueue:
    def __init__(self, client: redis.Redis, key: str, visibility_timeout: float) -> None:
        self.client = client
        self.key = key
        self.visibility_ms = max(1, int(visibility_timeout * 1000))
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.inflight: dict[bytes, Entry] = {}
        self._by_job: dict[str, Entry] = {}
        self._lock = threading.Lock()
        self._next_reclaim = 0.0
        self._group_ready = False
        self._heartbeat: threading.Thread | None = None
        self._stopping = threading.Event()

    @staticmethod
    def fields(kind: str, job_id: str, attempt: int) -> list[str]:
        """An entry as the commit script adds it."""
        return ["k", kind, "j", job_id, "a", str(attempt)]

    def ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            self.client.xgroup_create(self.key, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True
        if self._heartbeat is None:
            self._heartbeat = threading.Thread(target=self._beat, name="stepstream-redis-heartbeat", daemon=True)
            self._heartbeat.start()

    def take(self, count: int, block: float) -> list[Entry]:
        """Up to `count` entries: first those of vanished workers (redelivered), then new ones,
        waiting at most `block` seconds for some."""
        taken = self.reclaim_due(count)
        if len(taken) < count:
            try:
                reply = self.client.xreadgroup(GROUP, self.consumer, {self.key: ">"}, count=count - len(taken),
                                               block=int(block * 1000) if not taken else None)
            except redis.ResponseError as exc:
                self.lost_group(exc)
                reply = []
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    taken += self.keep(entry_id, fields, redelivered=False)
        return taken

    def reclaim_due(self, count: int) -> list[Entry]:
        """Entries of vanished workers, taken over (at most `count`), if it is time to look."""
        self.ensure_group()
        now = time.monotonic()
        if now < self._next_reclaim:
            return []
        self._next_reclaim = now + self.visibility_ms / 4000
        return self._reclaim(count)

    def lost_group(self, exc: redis.ResponseError) -> None:
        """A read failed with `exc`: if Redis lost the group (restarted without persistence), it is
        made again at the next read; anything else is raised."""
        if "NOGROUP" not in str(exc):
            raise exc
        self._group_ready = False

    def keep(self, entry_id: bytes, fields: dict | None, redelivered: bool) -> list[Entry]:
        """A read entry, held by this process from now on (none if it cannot be read: done)."""
        entry = _entry(entry_id, fields or {}, redelivered)
        if entry is None:  # deleted meanwhile, or not ours to read: done with it
            self.client.xack(self.key, GROUP, entry_id)
            return []
        with self._lock:
            self.inflight[entry_id] = entry
            self._by_job[entry.job_id] = entry
        return [entry]

    def _reclaim(self, count: int) -> list[Entry]:
        reply = self.client.xautoclaim(self.key, GROUP, self.consumer, self.visibility_ms, start_id="0-0",
                                       count=count)
        claimed = reply[1] if reply else []
        deleted = reply[2] if reply and len(reply) > 2 else []
        if deleted:
            self.client.xack(self.key, GROUP, *deleted)
        out: list[Entry] = []
        for entry_id, fields in claimed:
            out += self.keep(entry_id, fields, redelivered=True)
        return out

    def ack(self, entry: Entry) -> None:
        """The entry's work is committed: it leaves the queue."""
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(self.key, GROUP, entry.id)
        pipe.xdel(self.key, entry.id)
        pipe.execute()
        self.drop(entry)

    def give_back(self, entries: list[Entry]) -> None:
        """Entries taken but not to be run here: queued again (at the end) for any worker."""
        if not entries:
            return
        pipe = self.client.pipeline(transaction=True)
        for entry in entries:
            fields = self.fields(entry.kind, entry.job_id, entry.attempt)
            pipe.xadd(self.key, dict(zip(fields[::2], fields[1::2], strict=True)))
            pipe.xack(self.key, GROUP, entry.id)
            pipe.xdel(self.key, entry.id)
        pipe.execute()
        for entry in entries:
            self.drop(entry)

    def drop(self, entry: Entry) -> None:
        """Forget an entry here (acknowledged by a commit, or to be redelivered)."""
        with self._lock:
            self.inflight.pop(entry.id, None)
            if self._by_job.get(entry.job_id) is entry:
                del self._by_job[entry.job_id]

    def entry_of(self, job_id: str) -> Entry | None:
        """The entry this process runs for `job_id`, if any."""
        with self._lock:
            return self._by_job.get(job_id)

    def _beat(self) -> None:
        """Keep what this process runs claimed, so no one takes it over while it runs."""
        interval = self.visibility_ms / 3000
        while not self._stopping.wait(interval):
            with self._lock:
                ids = list(self.inflight)
            if not ids:
                continue
            try:
                self.client.xclaim(self.key, GROUP, self.consumer, 0, ids, justid=True)
            except redis.RedisError:
                logger.warning("stepstream: could not renew the claim on running work; retrying", exc_info=True)

    def stop(self) -> None:
        self._stopping.set()
