"""Soak, shortened (~15 s): 20 stream clients against a real uvicorn server under load, a tenth
of them dropping and resuming with Last-Event-ID every few seconds, two jobs cancelled mid-run.
The long version is `python bench/soak.py`; both share bench/soak.py."""

from __future__ import annotations

import gc
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

from soak import Segment, SoakClient, check, drive, memory_verdict, run_clients, soak_orchestrator  # noqa: E402

from harness.live import LiveServer  # noqa: E402
from stepstream.server import create_app  # noqa: E402

SECONDS = 12
REPLAY_SIZE = 4096  # fills and turns over within the first seconds: the warm-up
CHILDREN = 100  # per step: short jobs, so finished ones are evicted (max_finished=3) early on
CLIENTS = 20


def _server_objects(not_server: list) -> int:
    """Objects the garbage collector tracks in this process (every job, event, log record and
    progress dict of the server) minus those the clients and the test hold (`not_server`), which
    grow by design: a client keeps the state of every job it has seen. Not RSS: this process also
    runs the client threads, and its RSS climbed ~14 MB/s here while the Python heap stayed flat;
    `python bench/soak.py` measures the RSS of a server process of its own."""
    seen: set[int] = set()
    stack = [obj for holder in list(not_server) for obj in _client_state(holder)]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or not gc.is_tracked(obj) or not isinstance(obj, (dict, list, tuple, Segment)):
            continue  # plain data only: a type would lead to its module and everything else
        seen.add(id(obj))
        stack.extend(gc.get_referents(obj))
    return len(gc.get_objects()) - len(seen)


def _client_state(holder) -> list:
    if isinstance(holder, SoakClient):
        return [holder.jobs, holder._pending, holder.segments]
    return [holder]


def test_soak_every_client_folds_to_the_final_snapshot_with_no_unflagged_gap():
    orch = soak_orchestrator(REPLAY_SIZE)
    outcome: dict = {}
    finals: dict = {}
    registry: list = []
    drive_done = threading.Event()
    samples: list[tuple[float, int, bool]] = []
    with LiveServer(create_app(orch)) as server:
        start = time.monotonic()

        def run_jobs() -> None:
            try:
                outcome["finals"], outcome["marker"] = drive(orch, SECONDS, children=CHILDREN, finals=finals)
            finally:
                samples.append((time.monotonic() - start, memory(), warm()))
                drive_done.set()

        def memory() -> int:
            return _server_objects([*registry, finals, outcome])

        def warm() -> bool:  # the ring turned over and finished jobs are being evicted
            return orch.store.seq >= 2 * REPLAY_SIZE and len(finals) > 4

        def sample() -> None:  # a measurement every 0.5 s, not a synchronisation
            while not drive_done.wait(0.5):
                samples.append((time.monotonic() - start, memory(), warm()))

        threading.Thread(target=sample, daemon=True).start()
        threading.Thread(target=run_jobs, daemon=True).start()
        reference, clients, disconnects = run_clients(server.url, CLIENTS, SECONDS, random.Random(7),
                                                      period=2.0, pause=3.0, drive_done=drive_done,
                                                      registry=registry)
    orch.shutdown(wait=False)

    assert "finals" in outcome, "the driver did not finish"
    cancelled = [job for job in finals.values() if job["status"] == "cancelled"]
    assert len(cancelled) == 2 and all(j["progress"]["cancelled"] > 0 for j in cancelled)
    result = check(clients, reference, finals)
    assert result["problems"] == []
    assert disconnects >= 4 and result["resumes"]["replay"] >= 1
    assert result["states_compared"] >= CLIENTS * 2
    memory = memory_verdict(samples)
    assert memory["memory_ok"], memory


def _client_fed(events: list[tuple[str, dict]], resume_at: int | None = None) -> SoakClient:
    client = SoakClient("http://unused", "fed", deadline=0)
    for i, (type_, data) in enumerate(events):
        client._receive(type_, data, resumed=resume_at == i)
    client._flush()
    client.done.set()
    return client


def _stream(manager: dict, lost: int | None = None) -> list[tuple[str, dict]]:
    """A tiny stream: snapshot, three log lines, the marker; `lost` drops one of the logs."""
    events = [("snapshot", {"seq": 10, "jobs": [manager]})]
    for n, seq in enumerate((11, 12, 13), start=1):
        events.append(("log", {"seq": seq, "manager_id": manager["id"], "step_name": None,
                               "log_count": n, "manager_log_count": n}))
    events.append(("snapshot", {"seq": 14, "jobs": [{**manager, "log_count": 3}, {"id": "m", "definition": "marker",
                                                                                    "log_count": 0}]}))
    if lost is not None:
        del events[lost]
    return events


def test_the_soak_check_reports_a_lost_event():
    manager = {"id": "j", "definition": "soak", "log_count": 0, "steps": []}
    finals = {"j": {**manager, "log_count": 3}}
    reference = _client_fed(_stream(manager))
    assert check([_client_fed(_stream(manager))], reference, finals)["problems"] == []
    # the same client resuming after seq 11 but never getting seq 12
    lossy = _stream(manager, lost=2)[:-1]
    problems = check([_client_fed(lossy, resume_at=2)], reference, finals)["problems"]
    assert any("missing [12]" in p for p in problems) and any("a lost line" in p for p in problems)
