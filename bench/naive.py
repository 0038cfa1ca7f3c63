"""The baselines the benchmarks compare stepstream against: what the replaced system did.

- `create_naive_app(orch)`: the textbook sse-starlette broadcast. One unbounded
  `asyncio.Queue` per client; every event is put on every queue and encoded per client
  (`json.dumps` + `ServerSentEvent`); nothing is merged. It is fed by the same store as
  stepstream (`store.subscribe` + `store.events_after`) and sends the same event types as a
  plain `/api/events` stream (no per-child `job_status`), so both servers do the same job for
  the client.
- `scan_snapshot(store, job_id)`: a manager snapshot whose step counts are recomputed by
  scanning the manager's children, as the old system built `GET /api/jobs/{id}`.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import AsyncIterator

from sse_starlette.sse import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stepstream import Orchestrator, wire
from stepstream.backends.memory import Gone, MemoryStore
from stepstream.model import COUNTED, progress_dict


def scan_snapshot(store: MemoryStore, job_id: str) -> dict:
    """`{"seq", "job"}` of a manager, each step's progress counted by scanning all children."""
    with store._cond:  # the baseline reads the same state under the same lock
        manager = store._get(job_id)
        per_step: dict[str, Counter] = {step.id: Counter() for step in manager.steps}
        for child in manager.children:
            per_step[child.step.id][child.status] += 1
        job = wire.manager_json(manager)
        total_counts = Counter()
        for step_json in job["steps"]:
            counts = per_step[step_json["id"]]
            total_counts.update(counts)
            step_json["progress"] = progress_dict(sum(counts.values()), [counts[s] for s in COUNTED])
        job["progress"] = progress_dict(sum(total_counts.values()), [total_counts[s] for s in COUNTED])
        return {"seq": store.seq, "job": job}


class NaiveBroadcaster:
    """Copies every new store event onto every client's queue, from the event loop."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.queues: set[asyncio.Queue] = set()
        self.cursor = store.seq
        self.dropped = 0  # events lost because the pump fell behind the replay ring
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        self._lock = threading.Lock()
        store.subscribe(self._on_change)

    def _on_change(self) -> None:
        loop = self._loop
        if loop is None:
            return
        with self._lock:
            if self._scheduled:
                return
            self._scheduled = True
        loop.call_soon_threadsafe(self._pump)

    def _pump(self) -> None:
        with self._lock:
            self._scheduled = False
        while True:
            try:
                events, last = self.store.events_after(self.cursor)
            except Gone:  # the loop fell behind the ring: the naive server just loses them
                self.dropped += self.store.seq - self.cursor
                self.cursor = self.store.seq
                return
            if not events:
                return
            self.cursor = events[-1].seq
            for event in events:
                if event.type == "job_status" and event.data["kind"] == "child":
                    continue
                item = (event.seq, event.type, event.data)
                for queue in self.queues:
                    queue.put_nowait(item)

    async def stream(self) -> AsyncIterator[ServerSentEvent]:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self.cursor = self.store.seq
        queue: asyncio.Queue = asyncio.Queue()
        self._pump()  # older events go to the other clients only
        snap, _ = self.store.stream_snapshot(None)
        self.queues.add(queue)  # events up to the snapshot's seq that arrive later are skipped
        run_id = self.store.store_id
        try:
            yield ServerSentEvent(json.dumps(snap), event="snapshot", id=f"{run_id}-{snap['seq']}")
            while True:
                seq, type_, data = await queue.get()
                if seq <= snap["seq"]:
                    continue
                yield ServerSentEvent(json.dumps(data), event=type_, id=f"{run_id}-{seq}")
        finally:
            self.queues.discard(queue)


def create_naive_app(orch: Orchestrator) -> Starlette:
    """`GET /api/events` (naive broadcast) and `GET /api/jobs/{id}` (scanning snapshot)."""
    broadcaster = NaiveBroadcaster(orch.store)

    async def events(request: Request) -> Response:
        return EventSourceResponse(broadcaster.stream(), ping=15)

    async def job(request: Request) -> Response:
        return JSONResponse(scan_snapshot(orch.store, request.path_params["job_id"]))

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "seq": orch.store.seq, "streams": len(broadcaster.queues),
                             "dropped": broadcaster.dropped})

    app = Starlette(routes=[Route("/api/events", events), Route("/api/jobs/{job_id}", job),
                            Route("/api/health", health)])
    app.state.broadcaster = broadcaster
    return app
