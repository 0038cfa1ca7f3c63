"""The asyncio side of the event stream: wakes connections, merges, encodes each event once.

Connections keep no queue of their own. Each one holds a cursor (the last seq it sent) and reads
the store's shared replay ring from there at its own pace; the hub only tells them that there is
something new. A connection that falls so far behind that the ring has moved past its cursor
gets a fresh `snapshot` instead, so memory per connection stays bounded whatever the client does.
See docs/architecture.md for who wakes and who cancels whom.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from . import sse
from .events import Event, EventSource, Gone, latest_only
from .model import NotFound
from .offload import Offload, StorageUnavailable
from .sse import encode, encode_text

ENDING = frozenset({"end", "job_deleted"})  # after these a `?job=` stream has nothing more


class KeepAliveDue(Exception):
    """Raised out of a storage retry when a keep-alive tick came meanwhile: the stream sends one."""


@dataclass(frozen=True)
class StreamRequest:
    """What one connection asked for."""

    manager_id: str | None = None  # `?job=`: one manager job, ended by an `end` event
    children: bool = False  # `?children=1`: per-child `job_status` events too
    resume_from: int | None = None  # seq of a valid Last-Event-ID of this run


class Hub:
    """Fans out the store's events to any number of SSE connections on one event loop."""

    def __init__(
        self,
        store: EventSource,
        *,
        offload: Offload | None = None,
        min_interval: float = 0.01,
        max_interval: float = 0.05,
        batch_events: int = 5000,
        lag_events: int = 1000,
        chunk_bytes: int = 64 * 1024,
        retry_ms: int = 2000,
        ping: float = 15,
    ) -> None:
        self.store = store
        self.offload = offload or Offload()
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.batch_events = batch_events
        self.lag_events = lag_events  # a reader more than a batch behind reads this many at a time
        self.chunk_bytes = chunk_bytes
        self.retry_ms = retry_ms
        self.ping = ping  # seconds between keep-alive comments on an idle stream; 0: none
        self._loop: asyncio.AbstractEventLoop | None = None
        self._new_data: asyncio.Event | None = None
        self._wake_scheduled = False
        self._last_wake = 0.0
        self._ticks = 0  # keep-alive ticks so far: an idle stream that saw this change sends one
        self._ticking: asyncio.TimerHandle | None = None
        self._lock = threading.Lock()
        self._reads: dict[tuple, tuple[list[bytes], int, bool]] = {}
        self._encoded: OrderedDict[int, bytes] = OrderedDict()  # seq -> SSE bytes, shared by connections
        self._listening = 0  # streams and waiters that need the store's wake-ups
        self._unsubscribe: Callable[[], None] | None = None
        self.connections = 0
        self.merged = 0  # progress events left out of batches because a later one superseded them
        self.snapshots = 0  # snapshots sent to connections that resumed too late or fell behind
        self.stopping = False  # set by stop_streams(): every stream returns, its response completes

    # ------------------------------------------------------------------ waking

    def _attach(self) -> None:
        """Bind to the running loop; the app needs no lifespan event, so this happens lazily."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            with self._lock:
                self._loop = loop
                self._new_data = asyncio.Event()
                self._wake_scheduled = False
                self._ticking = None
                self.stopping = False  # a server started again in this process streams again

    @contextlib.contextmanager
    def _subscribed(self) -> Iterator[None]:
        """Hear of the store's changes while at least one stream or waiter needs to; the
        subscription ends with the last of them, whatever way it ends."""
        with self._lock:
            if self._listening == 0:
                self._unsubscribe = self.store.subscribe(self._on_change)
            self._listening += 1
        try:
            yield
        finally:
            with self._lock:
                self._listening -= 1
                if self._listening == 0 and self._unsubscribe is not None:
                    self._unsubscribe()
                    self._unsubscribe = None

    def _on_change(self) -> None:
        """Called by the store after every change, from whichever thread made it."""
        loop = self._loop
        if loop is None or self._wake_scheduled:
            return
        with self._lock:
            if self._wake_scheduled or self._loop is not loop:
                return
            self._wake_scheduled = True
        try:
            loop.call_soon_threadsafe(self._schedule_wake)
        except RuntimeError:  # the loop closed (server stopped)
            self._wake_scheduled = False

    def wake_interval(self) -> float:
        """Least time between two wakes: `min_interval`, stretched with the number of
        connections (a wake costs one send per connection), up to `max_interval`."""
        return min(self.max_interval, self.min_interval * max(1.0, self.connections / 100))

    def _schedule_wake(self) -> None:
        # At most one wake per interval: under load, connections read bigger batches.
        delay = self._last_wake + self.wake_interval() - time.monotonic()
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._wake)
        else:
            self._wake()

    def _wake(self) -> None:
        self._last_wake = time.monotonic()
        with self._lock:
            self._wake_scheduled = False
        self._reads.clear()  # a new batch: readers recompute (once per kind of request)
        event, self._new_data = self._new_data, asyncio.Event()
        if event is not None:
            event.set()

    def _keep_ticking(self) -> None:
        """One timer for every stream of the hub: every `ping` seconds it wakes the idle ones,
        and each sends a keep-alive. It stops when the last stream ends."""
        if self._ticking is None and self.ping > 0 and self.connections:
            self._ticking = asyncio.get_running_loop().call_later(self.ping, self._tick)

    def _tick(self) -> None:
        self._ticking = None
        self._ticks += 1
        event, self._new_data = self._new_data, asyncio.Event()
        if event is not None:
            event.set()
        self._keep_ticking()

    async def _wait_after(self, seq: int) -> bool:
        """Return True once the store's seq has passed `seq` (or the streams stop), False if
        a keep-alive is due first."""
        tick = self._ticks
        while self.store.visible_seq <= seq and not self.stopping:
            if self._ticks != tick:
                return False
            assert self._new_data is not None
            await self._new_data.wait()
        return True

    # ------------------------------------------------------------------ streams

    def parse_last_event_id(self, value: str | None) -> int | None:
        """The seq of a Last-Event-ID from this run of the server, or None (fresh snapshot) for
        anything else: another run's id, garbage, a seq of absurd length or non-ASCII digits."""
        return sse.parse_event_id(value, self.store.store_id)

    def event_id(self, seq: int) -> str:
        return sse.event_id(self.store.store_id, seq)

    def _encoding(self, event: Event) -> bytes:
        """The event's SSE bytes, made once and shared by every connection that sends it (the
        cache keeps the latest `2 * batch_events`; a reader further behind encodes again)."""
        piece = self._encoded.get(event.seq)
        if piece is None:
            piece = self._encoded[event.seq] = encode_text(self.event_id(event.seq), event.type, event.text)
            if len(self._encoded) > 2 * self.batch_events:
                self._encoded.popitem(last=False)
        return piece

    async def _storage_pause(self, tick: int) -> None:
        """Wait `retry_ms` before asking storage again; then raise `KeepAliveDue` if a keep-alive
        tick came since `tick` (the stream sends one and asks again)."""
        await asyncio.sleep(self.retry_ms / 1000)
        if self._ticks != tick:
            raise KeepAliveDue

    async def _snapshot(self, request: StreamRequest) -> tuple[int, bytes, bool]:
        """A fresh snapshot for this connection, read off the event loop. While storage does not
        answer, it waits and tries again (`KeepAliveDue` when a keep-alive is due meanwhile)."""
        tick = self._ticks
        while True:
            try:
                snap, settled = await self.offload.run(self.store.stream_snapshot, request.manager_id)
                break
            except StorageUnavailable:
                if self.stopping:
                    raise
                await self._storage_pause(tick)
        chunk = encode(self.event_id(snap["seq"]), "snapshot", snap)
        if settled:  # a finished job: nothing more will come
            chunk += self._end(snap["seq"], request.manager_id, snap["jobs"][0]["status"])
        return snap["seq"], chunk, settled

    def _end(self, seq: int, manager_id: str | None, status: str) -> bytes:
        return encode(self.event_id(seq), "end", {"seq": seq, "manager_id": manager_id, "status": status})

    def _select(self, events: list[Event], request: StreamRequest) -> tuple[list[Event], bool]:
        """The events this connection sends, progress merged (latest wins); and whether its
        job ended among them."""
        wanted: list[Event] = []
        ended = False
        for event in events:
            if request.manager_id is not None and event.manager_id != request.manager_id:
                continue
            if event.type in ENDING and request.manager_id is not None:
                wanted.append(event)
                ended = True
                break
            if event.type == "job_status" and event.data["kind"] == "child" and not request.children:
                continue
            wanted.append(event)
        kept = latest_only(wanted)
        self.merged += len(wanted) - len(kept)
        return kept, ended

    async def _events_after(self, cursor: int, limit: int) -> tuple[list[Event], int]:
        """Events after `cursor`: from memory on the loop when the store holds them there (the
        usual case), else read off the loop (older events, from the journal or Redis). Raises
        `Gone`."""
        held = self.store.held_events(cursor, limit)
        if held is not None:
            return held
        tick = self._ticks
        while True:
            try:
                return await self.offload.run(self.store.events_after, cursor, limit)
            except StorageUnavailable:
                if self.stopping:
                    return [], cursor
                await self._storage_pause(tick)

    async def _read(self, cursor: int, request: StreamRequest) -> tuple[list[bytes], int, bool]:
        """The next batch after `cursor` for this kind of request, as ready-to-send chunks, the
        new cursor, and whether the job ended. Connections woken together usually share a
        cursor, so one read, selection and encoding serves all of them until the next wake. A
        reader that is behind reads `lag_events` at a time, so no connection holds the loop for
        long."""
        key = (cursor, request.manager_id, request.children)
        cached = self._reads.get(key)
        if cached is not None:
            return cached
        behind = self.store.visible_seq - cursor > self.batch_events
        events, last = await self._events_after(cursor, self.lag_events if behind else self.batch_events)
        if not events:
            return [], cursor, False
        selected, ended = self._select(events, request)
        chunks: list[bytes] = []
        pieces: list[bytes] = []
        size = 0
        for event in selected:
            piece = self._encoding(event)
            pieces.append(piece)
            size += len(piece)
            if size >= self.chunk_bytes:
                chunks.append(b"".join(pieces))
                pieces, size = [], 0
        if pieces:
            chunks.append(b"".join(pieces))
        result = (chunks, selected[-1].seq if ended else events[-1].seq, ended)
        if events[-1].seq == last:  # caught up: others woken now will ask for the same batch
            self._reads[key] = result  # (a lagging reader's batch is its own; not kept)
        return result

    async def stream(self, request: StreamRequest) -> AsyncIterator[bytes]:
        """The bytes of one SSE connection: a snapshot (or a resume), then every change, and a
        keep-alive whenever it was idle for `ping` seconds. One generator, no inner one: a
        connection holds one frame while idle."""
        self._attach()
        self.connections += 1
        self._keep_ticking()
        try:
            with self._subscribed():
                greeting = f"retry: {self.retry_ms}\n\n".encode()  # goes with the first chunk
                cursor = request.resume_from
                unchecked = cursor is not None  # a resume: are the events after it still there?
                while True:
                    try:
                        if unchecked:
                            await self._events_after(cursor, 1)  # type: ignore[arg-type]
                            unchecked = False
                        if cursor is None:
                            cursor, chunk, settled = await self._snapshot(request)
                            await self.wait_visible(cursor)
                            yield greeting + chunk
                            greeting = b""
                            if settled:
                                return
                            continue
                        if greeting:
                            yield greeting
                            greeting = b""
                        if not await self._wait_after(cursor):
                            yield sse.KEEP_ALIVE
                            continue
                        if self.stopping:
                            return
                        chunks, cursor, ended = await self._read(cursor, request)
                    except Gone:  # resumed too late, or fell behind the ring: a fresh snapshot
                        self.snapshots += 1
                        cursor, unchecked = None, False
                        continue
                    except KeepAliveDue:  # storage has not answered for a while
                        yield greeting + sse.KEEP_ALIVE
                        greeting = b""
                        continue
                    except (NotFound, StorageUnavailable):  # the job was evicted meanwhile; shutting down
                        return
                    for chunk in chunks:
                        yield chunk
                        # A send to a client that left completes without suspending: give the loop
                        # to others, and let the disconnect cancel this stream, after every chunk.
                        await asyncio.sleep(0)
                    if ended:
                        return
        finally:
            self.connections -= 1

    async def wait_visible(self, seq: int) -> None:
        """Return once `seq` is visible (durable, with a journal): nothing is shown that a crash
        could take back."""
        if self.store.visible_seq >= seq:
            return
        self._attach()
        with self._subscribed():
            while self.store.visible_seq < seq and not self.stopping:
                assert self._new_data is not None
                await self._new_data.wait()

    def stop_streams(self) -> None:
        """End every open stream now, as a complete response (the server is shutting down).
        Call on the hub's event loop."""
        self.stopping = True
        if self._new_data is not None:
            self._new_data.set()


