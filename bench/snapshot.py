"""Snapshot cost: `GET /api/jobs/{id}` of a manager with 1,000 vs 100,000 children.

stepstream reads its O(1) counters; the baseline (bench/naive.py `scan_snapshot`, the old
system's way) recounts each step by scanning the children. Both answer through an ASGI app
(plain request/response, so httpx's ASGI transport is fine here; streams always use a real
server).

Run alone: `python bench/snapshot.py [--quick]`; `bench/run.py` runs it with the others.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import common
import httpx
from naive import create_naive_app

from stepstream import Orchestrator
from stepstream.server import create_app


def build_job(orch: Orchestrator, children: int) -> str:
    """A running 3-step manager whose first step holds `children` children, a third of them
    done, a third running, a third pending (built through the store: no thread pool needed)."""
    store = orch.store
    manager, [step] = store.create_manager("snap", ["a", "b", "c"], {})
    for i, child in enumerate(common.add_children(store, step, children)):
        if i % 3:
            store.begin_child(child)
        if i % 3 == 2:
            store.end_child(child, None)
    return manager.id


async def _time_gets(app, path: str, repeat: int) -> tuple[float, dict]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        body = (await client.get(path)).json()  # warm
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            response = await client.get(path)
            times.append(time.perf_counter() - start)
            assert response.status_code == 200
    return statistics.median(times), body


def snapshot_cost(sizes: tuple[int, ...] = (1_000, 100_000), repeat: int = 50) -> dict:
    orch = Orchestrator(max_workers=1, capture_level=None, replay_size=1024)
    ours, theirs = create_app(orch), create_naive_app(orch)
    rows = []
    for size in sizes:
        job = build_job(orch, size)
        t_ours, body_ours = asyncio.run(_time_gets(ours, f"/api/jobs/{job}", repeat))
        t_theirs, body_theirs = asyncio.run(_time_gets(theirs, f"/api/jobs/{job}", max(5, repeat // 5)))
        assert body_ours["job"]["progress"] == body_theirs["job"]["progress"], "the baseline counts differently"
        rows.append({"children": size, "ms": t_ours * 1e3, "baseline_ms": t_theirs * 1e3})
    orch.shutdown(wait=False)
    return {"name": "snapshot_cost", "rows": rows, **common.growth(rows, "ms", "baseline_ms")}


if __name__ == "__main__":
    quick = common.arguments(__doc__).parse_args().quick
    print(json.dumps(snapshot_cost(repeat=20 if quick else 50), indent=1))
