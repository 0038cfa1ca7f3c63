from __future__ import annotations

import threading

import pytest

from harness.live import LiveServer
from stepstream import Orchestrator, Step
from stepstream.server import create_app
from tests.backends import BACKENDS, Backend, closed_all
from tests.redisserver import RedisServer, require_redis_server


class Gates:
    """Named threading.Events that job code waits on, so a test can hold a job mid-run."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._all_open = False

    def __getitem__(self, name: str) -> threading.Event:
        with self._lock:
            if name not in self._events:
                self._events[name] = threading.Event()
                if self._all_open:
                    self._events[name].set()
            return self._events[name]

    def open_all(self) -> None:
        """Open every gate, including the ones job code has not asked for yet."""
        with self._lock:
            self._all_open = True
            for event in self._events.values():
                event.set()


@pytest.fixture
def gates():
    g = Gates()
    yield g
    g.open_all()


@pytest.fixture
def orch():
    o = Orchestrator(max_workers=6)
    yield o
    o.shutdown(wait=False)


@pytest.fixture(scope="module")
def module_redis_url():
    """A redis-server for a whole test module (each test keeps to its own key prefix)."""
    with RedisServer(require_redis_server(), durable=False) as server:
        yield server.url
        closed_all()


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path):
    """Makes orchestrators of one storage mode (memory, sqlite, redis, celery) for this test."""
    url = request.getfixturevalue("module_redis_url") if request.param in ("redis", "celery") else None
    made = Backend(request.param, tmp_path, url)
    yield made
    made.close()


@pytest.fixture
def backend_orch(backend):
    """An orchestrator of each storage mode with 4 worker threads and the suite's definitions."""
    return backend.orchestrator()


@pytest.fixture
def server(orch):
    with LiveServer(create_app(orch)) as srv:
        yield srv


def mixed_definition(gates: Gates, name: str = "mixed", crawl: int = 6, agents: int = 8) -> list[Step]:
    """discover (crawler style, nested parent_id links) -> extract (agent style, step_id links,
    async) -> report. Each step waits for gate '<step>' before its handler returns, so tests can
    hold it running; children log at several levels and some fail."""

    def page(ctx, depth):
        ctx.log("info", f"page depth {depth}")
        if depth < 2:
            for _ in range(2):
                ctx.spawn(page, depth + 1)
        if depth == 2 and ctx.job_id.endswith(("0", "5")):
            raise ConnectionError("timed out")

    def discover(ctx):
        for _ in range(crawl // 3):
            ctx.spawn(page, 0)
        ctx.log("info", "discover spawned")
        gates[f"{name}.discover"].wait(30)

    async def agent(ctx, n):
        ctx.log("debug" if n % 2 else "warning", f"agent {n} answered")
        if n == 3:
            raise ValueError("unparsable answer")

    def extract(ctx):
        for n in range(agents):
            ctx.orchestrator.spawn(agent, n, step_id=ctx.step_id)
        gates[f"{name}.extract"].wait(30)

    def report(ctx):
        ctx.log("info", "report written")
        gates[f"{name}.report"].wait(30)

    return [Step("discover", discover), Step("extract", extract), Step("report", report)]
