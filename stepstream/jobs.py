"""Jobs as the store holds them: managers, steps and children, and their rebuilding from what a
journal last wrote (after a restart, to settle the ones that were running)."""

from __future__ import annotations

import itertools
import json
import operator
import secrets
import time
from array import array
from bisect import bisect_left
from collections.abc import Iterator
from datetime import datetime
from functools import partial
from operator import attrgetter, lt

from .encoding import call_summary
from .journal import Unsettled
from .logs import LogBucket
from .model import CANCELLED, CHILD, MANAGER, PENDING, RUNNING, SLOT, STEP, progress_dict

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
        self.counts: list[int] | tuple[int, ...] = NO_COUNTS  # a step's or a manager's: a list of its own
        self.log_count = 0
        self.lost = 0
        self.summary: str | None = None  # a child's arguments in short, once made
        self.attempts: tuple[dict, ...] = ()  # a child's earlier attempts' errors (engine.earlier_attempts)

    def progress(self) -> dict[str, int]:
        return progress_dict(self.total, self.counts)


NO_COUNTS = (0, 0, 0, 0, 0)  # a child counts no children (one shared tuple, not a list per child)


def new_manager(definition: str, created_at: float, logs_per_step: int) -> Job:
    """A manager Job with every field a manager has, at its starting values."""
    manager = Job(MANAGER, definition, created_at)
    manager.definition = definition
    manager.params, manager.params_json, manager.rerun_of = {}, None, None
    manager.end_seq, manager.ordinal = None, 0
    manager.manager, manager.step, manager.index = manager, None, None
    manager.bucket = LogBucket(logs_per_step)
    manager.steps, manager.children = [], []
    manager.counts = [0, 0, 0, 0, 0]
    manager.cancelled, manager.settled, manager.current = False, False, 0
    return manager


def new_step(manager: Job, name: str, created_at: float, logs_per_step: int) -> Job:
    """The next step of `manager`, with every field a step has, added to its steps."""
    step = Job(STEP, name, created_at)
    step.manager, step.step, step.parent_id, step.index = manager, step, manager.id, len(manager.steps)
    step.bucket = LogBucket(logs_per_step)
    step.counts = [0, 0, 0, 0, 0]
    step.handler_returned, step.handler_error, step.handler_traceback = False, None, None
    manager.steps.append(step)
    return step


_NAN = float("nan")  # a time not set (a child cancelled before it began): None again on reading


class FinishedChildren:
    """The children of a settled manager, compactly: their `Job` objects are let go of (with the
    function and arguments they ran with) and each child read is rebuilt as a `Job` equal to the
    one it was (`child`), so its JSON is the same.

    What most children share is kept once: `shapes` holds each distinct tuple of (name, status,
    step, parent id, depth, attempt, retries, lost, error, traceback) and `codes` one small number
    per child into it (a byte while there are at most 256 shapes); times are doubles (`created`,
    `started`, `finished`; NaN for None); summaries are kept as they were, and earlier attempts
    for the children that have some. A store maps each child's id to this object; `find` bisects
    the ids (in creation order they are sorted; if they are not, it searches them)."""

    __slots__ = ("manager", "ids", "sorted", "shapes", "codes", "summaries", "created", "started", "finished",
                 "attempts")

    def __init__(self, manager: Job, children: list[Job]) -> None:
        # Made under the store's lock: column by column, with `attrgetter` where it can (a loop in C).
        self.manager = manager
        self.ids = list(map(_ID, children))
        self.sorted: bool | None = None  # known on the first `find`
        table: dict[tuple, int] = {}  # not a list of every shape first: that many tuples alive would wake the GC
        codes = [table.setdefault((c.name, c.status, c.step, c.parent_id, c.depth, c.attempt, c.retries, c.lost,
                                   c.error, c.traceback), len(table)) for c in children]
        self.shapes = list(table)
        self.codes = bytes(codes) if len(table) <= 256 else array("I", codes)
        self.summaries = summaries = list(map(_SUMMARY, children))
        for position in itertools.compress(range(len(children)), map(_IS_NONE, summaries)):  # rebuilt from old rows
            child = children[position]
            summaries[position] = call_summary(child.args, child.kwargs)
        self.created, self.started, self.finished = (_times(children, getter) for getter in _TIMES)
        attempts = list(map(_ATTEMPTS, children))
        self.attempts = {position: attempts[position] for position in itertools.compress(range(len(children)),
                                                                                         attempts)}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, position: int) -> Job:
        count = len(self.ids)
        if not -count <= position < count:
            raise IndexError(position)
        return self.child(position % count)

    def __iter__(self) -> Iterator[Job]:
        return map(self.child, range(len(self.ids)))

    def child(self, position: int) -> Job:
        """The child at `position`, rebuilt (a new `Job` each time: changing it changes nothing)."""
        job = Job.__new__(Job)  # no new id
        (job.name, job.status, job.step, job.parent_id, job.depth, job.attempt, job.retries, job.lost,
         job.error, job.traceback) = self.shapes[self.codes[position]]
        started, finished = self.started[position], self.finished[position]
        job.id, job.kind, job.manager, job.position = self.ids[position], CHILD, self.manager, position
        job.created_at = self.created[position]
        job.started_at = started if started == started else None
        job.finished_at = finished if finished == finished else None
        job.summary, job.attempts = self.summaries[position], self.attempts.get(position, ())
        job.fn, job.args, job.kwargs = None, (), {}
        job.total, job.counts, job.log_count = 0, NO_COUNTS, 0
        return job

    def find(self, job_id: str) -> Job:
        """The child `job_id` (KeyError if it is not one of these)."""
        ids = self.ids
        if self.sorted is None:
            self.sorted = all(map(lt, ids, itertools.islice(ids, 1, None)))
        if self.sorted:
            position = bisect_left(ids, job_id)
            if position == len(ids) or ids[position] != job_id:
                raise KeyError(job_id)
        else:
            try:
                position = ids.index(job_id)
            except ValueError:
                raise KeyError(job_id) from None
        return self.child(position)

    def positions(self, step: Job | None, status: str | None, start: int) -> Iterator[int]:
        """The positions from `start` on of the children in `step` (any if None) with `status`
        (any if None), in order."""
        if step is None and status is None:
            return iter(range(start, len(self.ids)))
        wanted = [code for code, shape in enumerate(self.shapes)
                  if (step is None or shape[2] is step) and (status is None or shape[1] == status)]
        codes = self.codes
        if len(wanted) == 1 and isinstance(codes, bytes):
            return _found(codes, wanted[0], start)
        chosen = set(wanted)
        return (position for position in range(start, len(codes)) if codes[position] in chosen)


_ID, _SUMMARY, _ATTEMPTS = attrgetter("id"), attrgetter("summary"), attrgetter("attempts")
_TIMES = (attrgetter("created_at"), attrgetter("started_at"), attrgetter("finished_at"))
_IS_NONE = partial(operator.is_, None)


def _times(children: list[Job], getter: attrgetter) -> array:
    try:
        return array("d", list(map(getter, children)))
    except TypeError:  # some are None (a child cancelled before it began)
        return array("d", [_NAN if t is None else t for t in map(getter, children)])


def _found(codes: bytes, code: int, start: int) -> Iterator[int]:
    position = codes.find(code, start)
    while position >= 0:
        yield position
        position = codes.find(code, position + 1)


def compact_children(manager: Job) -> FinishedChildren | None:
    """A settled manager's children as `FinishedChildren`, once all of them are terminal (else
    None: they stay as they are)."""
    children, counts = manager.children, manager.counts
    if isinstance(children, FinishedChildren) or counts[SLOT[PENDING]] or counts[SLOT[RUNNING]]:
        return None
    return FinishedChildren(manager, children)


def child_ids(manager: Job) -> list[str]:
    """The ids of a manager's children, whichever way they are kept."""
    children = manager.children
    return children.ids if isinstance(children, FinishedChildren) else [c.id for c in children]


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
