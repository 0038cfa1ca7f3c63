"""Jobs as the store holds them: managers, steps and children, and their rebuilding from what a
journal last wrote (after a restart, to settle the ones that were running)."""

from __future__ import annotations

import itertools
import json
import secrets
import time
from datetime import datetime

from .journal import Unsettled
from .logs import LogBucket
from .model import CANCELLED, CHILD, MANAGER, PENDING, SLOT, STEP, progress_dict

_ids = itertools.count(1)
_run_prefix = secrets.token_hex(3)  # ids stay unique across processes that share a database


def new_id(prefix: str) -> str:
    return f"{prefix}_{_run_prefix}{next(_ids):06x}"


class Job:
    """One manager, step or child job. Mutated only by the store, under its lock."""

    __slots__ = (
        "id", "kind", "name", "status", "definition", "params", "created_at", "started_at",
        "finished_at", "error", "traceback", "manager", "step", "parent_id", "index",
        # steps and managers
        "total", "counts", "log_count", "bucket",
        # steps
        "handler_returned", "handler_error", "handler_traceback",
        # managers
        "steps", "children", "cancelled", "settled", "current", "ordinal", "rerun_of", "end_seq",
        "params_json",
        # children
        "fn", "args", "kwargs", "retries", "attempt", "depth", "position", "lost", "summary", "attempts",
    )  # fmt: skip

    def __init__(self, kind: str, name: str, created_at: float) -> None:
        self.id = new_id(kind[0])
        self.kind = kind
        self.name = name
        self.status = PENDING
        self.created_at = created_at
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.error: str | None = None
        self.traceback: str | None = None
        self.parent_id: str | None = None
        self.total = 0
        self.counts = [0, 0, 0, 0, 0]
        self.log_count = 0
        self.lost = 0
        self.summary: str | None = None  # a child's arguments in short, once made
        self.attempts: tuple[dict, ...] = ()  # a child's earlier attempts' errors (engine.earlier_attempts)

    def progress(self) -> dict[str, int]:
        return progress_dict(self.total, self.counts)


def new_manager(definition: str, created_at: float, logs_per_step: int) -> Job:
    """A manager Job with every field a manager has, at its starting values."""
    manager = Job(MANAGER, definition, created_at)
    manager.definition = definition
    manager.params, manager.params_json, manager.rerun_of = {}, None, None
    manager.end_seq, manager.ordinal = None, 0
    manager.manager, manager.step, manager.index = manager, None, None
    manager.bucket = LogBucket(logs_per_step)
    manager.steps, manager.children = [], []
    manager.cancelled, manager.settled, manager.current = False, False, 0
    return manager


def new_step(manager: Job, name: str, created_at: float, logs_per_step: int) -> Job:
    """The next step of `manager`, with every field a step has, added to its steps."""
    step = Job(STEP, name, created_at)
    step.manager, step.step, step.parent_id, step.index = manager, step, manager.id, len(manager.steps)
    step.bucket = LogBucket(logs_per_step)
    step.handler_returned, step.handler_error, step.handler_traceback = False, None, None
    manager.steps.append(step)
    return step


def rebuild(kept: Unsettled, logs_per_step: int) -> Job:
    """A manager job with its steps and children as the journal last wrote them (code-less: a
    child's function is gone with the process). Counts are recounted from the children."""
    data = kept.job
    manager = _with_common(new_manager(data["definition"], 0.0, logs_per_step), data)
    manager.params = data.get("params", {})
    manager.params_json = json.dumps(manager.params)
    manager.rerun_of, manager.ordinal = data.get("rerun_of"), kept.ordinal
    manager.cancelled = data["status"] == CANCELLED
    manager.log_count = data["log_count"]
    manager.bucket = _bucket(logs_per_step, kept.logs.get(None, []))
    steps_by_id = {}
    for index, step_data in enumerate(data["steps"]):
        step = _with_common(new_step(manager, step_data["name"], 0.0, logs_per_step), step_data)
        step.log_count = step_data["log_count"]
        step.bucket = _bucket(logs_per_step, kept.logs.get(step.id, []))
        steps_by_id[step.id] = step
        if step_data["name"] == data["current_step"]:
            manager.current = index
    for position, child_data in enumerate(kept.children):
        child = _with_common(Job(CHILD, child_data["name"], 0.0), child_data)
        child.manager, child.step = manager, steps_by_id[child_data["step_id"]]
        child.parent_id, child.depth, child.position = child_data["parent_id"], child_data["depth"], position
        child.attempt, child.retries = child_data["attempt"], child_data["retries"]
        child.summary = child_data.get("summary")
        child.attempts = tuple(child_data.get("attempts") or ())  # its arguments are gone with the process
        child.fn, child.args, child.kwargs = None, (), {}
        manager.children.append(child)
        for counted in (child.step, manager):
            counted.total += 1
            counted.counts[SLOT[child.status]] += 1
    return manager


def _with_common(job: Job, data: dict) -> Job:
    """`job` with the fields every kind has taken from its JSON."""
    job.created_at = _epoch(data.get("created_at")) or time.time()
    job.id, job.status = data["id"], data["status"]
    job.started_at, job.finished_at = _epoch(data.get("started_at")), _epoch(data.get("finished_at"))
    job.error, job.traceback = data.get("error"), data.get("traceback")
    return job


def _epoch(text: str | None) -> float | None:
    return datetime.fromisoformat(text).timestamp() if text else None


def _bucket(cap: int, records: list[dict]) -> LogBucket:
    bucket = LogBucket(cap)
    for record in records:
        bucket.append(record)
    return bucket
