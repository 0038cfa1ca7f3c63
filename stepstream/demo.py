"""Demo job definitions with simulated work: no network, random durations, some failures.

- `nearby_restaurants`: discover places crawler style (pages discovered at random depth, each
  child linked only by `parent_id`), extract keywords agent style (async children linked by
  `step_id`), then summarise.
- `web_crawl`: crawl a site with flaky fetches that retry, then build an index.
- `flaky_import`: an import whose every record fails, so the step fails and later steps are
  skipped.

Sizes and speed come from the job's params: `{"size": 40, "speed": 1.0, "fail_rate": 0.05}`,
checked by `validate` before a job is created (the API answers 422 to anything else).
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time

from .model import StepstreamError
from .orchestrator import JobContext, Orchestrator, Step

log = logging.getLogger("stepstream.demo")

CUISINES = ("thai", "ramen", "tapas", "pizza", "mezze", "dim sum", "tacos", "bistro", "curry")


MAX_SIZE = 5000
MAX_SPEED = 10.0
PARAMS = {  # name: (type, low, high)
    "size": (int, 1, MAX_SIZE),
    "speed": (float, 0.0, MAX_SPEED),
    "fail_rate": (float, 0.0, 1.0),
    "city": (str, 1, 100),
}


def validate(params: dict) -> None:
    """Reject demo params that would not make sense or would not end: unknown names, wrong
    types, sizes over `MAX_SIZE` children per step, a speed that makes a child sleep for years."""
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise ValueError(f"unknown demo params {', '.join(map(repr, unknown))}; known: {', '.join(PARAMS)}")
    for name, value in params.items():
        kind, low, high = PARAMS[name]
        if kind is str:
            if not isinstance(value, str) or not low <= len(value) <= high:
                raise ValueError(f"{name} must be a string of {low} to {high} characters")
            continue
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if not numeric or (kind is int and not isinstance(value, int)) or not low <= value <= high:
            raise ValueError(f"{name} must be {'a whole' if kind is int else 'a'} number from {low} to {high}, "
                             f"not {value!r}")


def _size(ctx: JobContext, default: int = 40) -> int:
    return int(ctx.params.get("size", default))


def _pause(ctx: JobContext, low: float, high: float) -> float:
    """Simulated work time, scaled by `speed` (0 makes the demo instant)."""
    return random.uniform(low, high) * float(ctx.params.get("speed", 1.0))


def _fails(ctx: JobContext) -> bool:
    return random.random() < float(ctx.params.get("fail_rate", 0.05))


# ---------------------------------------------------------------- nearby_restaurants


def discover_places(ctx: JobContext) -> None:
    """Seed one search page per district; pages link to more pages (crawler style)."""
    districts = max(1, _size(ctx) // 8)
    ctx.log("info", f"searching {districts} districts around {ctx.params.get('city', 'Lisbon')}")
    for n in range(districts):
        ctx.spawn(fetch_listing, f"/search?district={n}", depth=0, budget=8, retries=1)


def fetch_listing(ctx: JobContext, path: str, depth: int, budget: int) -> None:
    time.sleep(_pause(ctx, 0.05, 0.4))
    if ctx.cancelled:
        ctx.log("warning", f"stopped before fetching {path}: job cancelled")
        return
    if _fails(ctx):
        raise ConnectionError(f"GET {path} timed out")
    links = random.randint(0, 3) if depth < 3 else 0
    links = min(links, budget - 1)
    ctx.log("debug", f"GET {path} -> 200, {links} more pages")
    log.info("parsed listing %s (depth %d)", path, depth)
    for n in range(max(0, links)):
        ctx.spawn(fetch_listing, f"{path}&page={n}", depth=depth + 1, budget=(budget - 1) // max(1, links))


def extract_keywords(ctx: JobContext) -> None:
    """One agent call per place, each naming its step (agent style)."""
    orch = ctx.orchestrator
    for n in range(_size(ctx)):
        orch.spawn(keyword_agent, f"place-{n:03d}", step_id=ctx.step_id, retries=1)
    ctx.log("info", f"asked {_size(ctx)} agents for keywords")


async def keyword_agent(ctx: JobContext, place: str) -> None:
    await asyncio.sleep(_pause(ctx, 0.1, 0.8))
    if ctx.cancelled:
        return
    if _fails(ctx):
        ctx.log("warning", f"{place}: model answer was not valid JSON")
        raise ValueError(f"{place}: unparsable agent answer")
    words = random.sample(CUISINES, 2)
    ctx.log("info", f"{place}: {', '.join(words)}")


def summarise(ctx: JobContext) -> None:
    time.sleep(_pause(ctx, 0.2, 0.5))
    ctx.log("info", f"summary written for {_size(ctx)} places")


# ---------------------------------------------------------------- web_crawl


def seed_site(ctx: JobContext) -> None:
    for n in range(max(1, _size(ctx) // 10)):
        ctx.spawn(crawl_page, f"https://example.test/section/{n}", depth=0, retries=2)


def crawl_page(ctx: JobContext, url: str, depth: int) -> None:
    time.sleep(_pause(ctx, 0.02, 0.3))
    if ctx.cancelled:
        return
    if random.random() < 2 * float(ctx.params.get("fail_rate", 0.05)):
        raise TimeoutError(f"{url}: read timed out (attempt {ctx.attempt})")
    if depth < 2:
        for n in range(random.randint(1, 4)):
            ctx.spawn(crawl_page, f"{url}/{n}", depth=depth + 1, retries=2)
    ctx.log("debug", f"crawled {url}")


def build_index(ctx: JobContext) -> None:
    for shard in range(4):
        ctx.spawn(index_shard, shard)


def index_shard(ctx: JobContext, shard: int) -> None:
    time.sleep(_pause(ctx, 0.1, 0.4))
    ctx.log("info", f"shard {shard} indexed")


# ---------------------------------------------------------------- flaky_import


def read_records(ctx: JobContext) -> None:
    for n in range(min(_size(ctx), 12)):
        ctx.spawn(import_record, n)


def import_record(ctx: JobContext, n: int) -> None:
    time.sleep(_pause(ctx, 0.05, 0.2))
    raise PermissionError(f"record {n}: upstream rejected the API key")


def publish(ctx: JobContext) -> None:
    ctx.log("info", "published")


DEFINITIONS: dict[str, list[Step]] = {
    "nearby_restaurants": [
        Step("discover", discover_places),
        Step("extract_keywords", extract_keywords),
        Step("summarise", summarise),
    ],
    "web_crawl": [Step("crawl", seed_site), Step("index", build_index)],
    "flaky_import": [Step("read", read_records), Step("publish", publish)],
}


def keep_running(orch: Orchestrator, size: int = 60, pause: float = 5.0) -> threading.Thread:
    """Start demo jobs one after another (cycling the definitions) until the orchestrator shuts
    down, so a page opened at any time has something live to show."""

    def loop() -> None:
        n = 0
        while True:
            name = list(DEFINITIONS)[n % len(DEFINITIONS)]
            n += 1
            try:
                job_id = orch.start(name, params={"size": size, "city": "Lisbon"})
                orch.wait(job_id)
            except StepstreamError:  # shut down
                return
            if orch.closed.wait(pause):
                return

    thread = threading.Thread(target=loop, name="stepstream-demo", daemon=True)
    thread.start()
    return thread


def register(orch: Orchestrator) -> None:
    """Define the demo definitions on `orch`."""
    for name, steps in DEFINITIONS.items():
        orch.define(name, steps, validate=validate)
