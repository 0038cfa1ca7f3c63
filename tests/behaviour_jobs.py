"""The jobs of the behaviour suite (tests/test_behaviour.py), written so that every backend can run
them: module-level functions (a Redis worker finds a child by `module:qualname`), JSON arguments,
and what a job does described by its params (a *plan*), not by closures.

A plan names, per step, what its handler does: the children it spawns (each a child *spec*, which
may spawn kids of its own), its log lines, whether it raises, whether it waits on a gate. Gates are
`threading.Event`s keyed by the test's token (every backend here runs work in this process), so a
test can hold a handler or a child mid-run and release it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any

from stepstream import Orchestrator, Step

HOLD = 30  # seconds a gate is waited on at most: a test that forgets one still ends
ODD_LINE = "odd \ud800 nul \x00 tab \t ✓ " + "x" * 70_000  # a lone surrogate, a NUL, too long
ODD_ERROR = "first line ✓ \udcff\nsecond line"

_gates: dict[str, threading.Event] = {}
_open_tokens: set[str] = set()
_lock = threading.Lock()


def gate(token: str, name: str) -> threading.Event:
    """The gate `name` of the test whose token is `token`."""
    with _lock:
        event = _gates.get(f"{token}/{name}")
        if event is None:
            event = _gates[f"{token}/{name}"] = threading.Event()
            if token in _open_tokens:
                event.set()
        return event


def open_gates(token: str) -> None:
    """Open every gate of a test, also the ones its jobs have not asked for yet (its teardown)."""
    with _lock:
        _open_tokens.add(token)
        for key, event in list(_gates.items()):
            if key.startswith(f"{token}/"):
                event.set()
                del _gates[key]


# ---------------------------------------------------------------- plans


def child(fail: int = 0, retries: int = 0, kids: list[dict] | None = None, **extra: Any) -> dict:
    """A child spec: its first `fail` attempts raise; it gets `retries`; on its first attempt it
    spawns `kids` (linked to it by parent_id). Extra keys: `hold` (a gate name to wait on),
    `until_cancel` (loop until `ctx.cancelled`), `log` ([level, message]), `std_log` (a warning
    through standard logging), `deeper` (levels of one kid each, linked through the orchestrator
    by parent_id), `odd` (log `ODD_LINE`, then raise `ODD_ERROR`), `by_step` (its kids are
    linked to the step by step_id instead)."""
    return {"fail": fail, "retries": retries, "kids": kids or [], **extra}


def plan(token: str, **steps: dict) -> dict:
    """Params of a planned job: per step name, what its handler does (see `planned_step`)."""
    return {"token": token, "plan": steps}


def step(*children: dict, **extra: Any) -> dict:
    """A step's plan: the children its handler spawns. Extra keys: `raises` (a message),
    `hold` (wait on the gate `step <name>` before returning), `logs` ([[level, message], …]),
    `echo_params` (log the params as read), `spawn_after_hold` (once the gate opened, spawn one more
    child and log what happened),
    `by_step` (link the children by step_id, agent style), `read_back` (read each child's snapshot
    right after spawning it, and log what was read), `threads` (spawn the children from
    this many threads at once, by step_id), `observe` (log the other steps' statuses as seen)."""
    return {"children": list(children), **extra}


# ---------------------------------------------------------------- handlers and children


def planned_step(ctx) -> None:
    """A step handler doing what the job's plan says for this step."""
    token = ctx.params["token"]
    spec = ctx.params["plan"].get(ctx.step_name, {})
    for level, message in spec.get("logs", []):
        ctx.log(level, message)
    if spec.get("echo_params"):
        ctx.log("info", json.dumps(ctx.params, sort_keys=True))
    if spec.get("observe"):
        snapshot = ctx.orchestrator.snapshot(ctx.manager_id)["job"]
        ctx.log("info", "saw " + ", ".join(f"{s['name']} {s['status']}" for s in snapshot["steps"]))
    kids = spec.get("children", [])
    threads = spec.get("threads", 0)
    if threads:
        def spawn_all() -> None:
            for kid in kids:
                ctx.orchestrator.spawn(planned_child, kid, token, step_id=ctx.step_id, retries=kid["retries"])

        workers = [threading.Thread(target=spawn_all) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    else:
        for kid in kids:
            if spec.get("by_step"):
                spawned = ctx.orchestrator.spawn(planned_child, kid, token, step_id=ctx.step_id,
                                                 retries=kid["retries"])
            else:
                spawned = ctx.spawn(planned_child, kid, token, retries=kid["retries"])
            if spec.get("read_back"):
                try:
                    ctx.log("info", f"read {ctx.orchestrator.snapshot(spawned)['job']['kind']}")
                except Exception as exc:  # noqa: BLE001 - what the handler saw is the test's subject
                    ctx.log("info", f"read failed: {type(exc).__name__}: {exc}")
    if spec.get("hold"):
        gate(token, f"step {ctx.step_name}").wait(HOLD)
    if spec.get("spawn_after_hold"):
        try:
            ctx.spawn(planned_child, child(), token)
            ctx.log("info", "spawned after hold")
        except Exception as exc:  # noqa: BLE001 - what the handler saw is the test's subject
            ctx.log("info", f"refused: {type(exc).__name__}: {exc}")
    if spec.get("raises"):
        raise ValueError(spec["raises"])


def planned_child(ctx, spec: dict, token: str) -> None:
    """A child doing what its spec says (see `child`)."""
    ctx.log("debug", f"attempt {ctx.attempt}")
    if ctx.attempt == 1:
        for kid in spec["kids"]:
            if spec.get("by_step"):
                ctx.orchestrator.spawn(planned_child, kid, token, step_id=ctx.step_id, retries=kid["retries"])
            else:
                ctx.spawn(planned_child, kid, token, retries=kid["retries"])
        if spec.get("deeper"):
            deeper = {**spec, "deeper": spec["deeper"] - 1, "kids": []}
            ctx.orchestrator.spawn(planned_child, deeper, token, parent_id=ctx.job_id)
    if "log" in spec:
        ctx.log(*spec["log"])
    if spec.get("odd"):
        ctx.log("info", ODD_LINE)
        raise RuntimeError(ODD_ERROR)
    if "std_log" in spec:
        logging.getLogger("some.library").warning(spec["std_log"])
    if "hold" in spec:
        gate(token, spec["hold"]).wait(HOLD)
    if spec.get("until_cancel"):
        gate(token, "running").set()
        while not ctx.cancelled:
            if gate(token, "never").wait(0.005):  # a cooperative work loop polling ctx.cancelled
                break
        ctx.log("warning", "saw cancel")
    if ctx.attempt <= spec["fail"]:
        raise RuntimeError(f"attempt {ctx.attempt}")


async def async_step(ctx) -> None:
    """An async handler: spawns `ctx.params["agents"]` async children; agent 0 fails."""
    await asyncio.sleep(0)
    for n in range(ctx.params["agents"]):
        ctx.spawn(async_agent, n)


async def async_agent(ctx, n: int) -> None:
    await asyncio.sleep(0)
    ctx.log("info", f"agent {n}")
    if n == 0:
        raise ValueError("no answer")


DEFINITIONS = {
    "a": ["a"],
    "ab": ["a", "b"],
    "abc": ["a", "b", "c"],
}


def define_jobs(orch: Orchestrator) -> Orchestrator:
    """Register the suite's definitions: planned jobs of one, two and three steps (named after
    their steps), and `async`."""
    for name, steps in DEFINITIONS.items():
        orch.define(name, [Step(s, planned_step) for s in steps])
    orch.define("async", [Step("a", async_step)])
    return orch
