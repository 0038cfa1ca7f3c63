"""Jobs as Redis hash fields and events as Redis stream entries, both ways.

Every hash field holds one JSON value (`null` for None), so a guard compares exact strings and
counters (`total`, `c0`…`c4`, `log_count`) are plain integers that `HINCRBY` can change.
"""

from __future__ import annotations

import json
import operator
from typing import Any

from ...callables import callable_name
from ...encoding import dumps
from ...events import Event
from ...jobs import Job
from ...logs import LogBucket
from ...model import CHILD, MANAGER, STEP, progress_dict

COUNTERS = ("total", "c0", "c1", "c2", "c3", "c4", "log_count")

_COMMON = ("id", "kind", "name", "status", "created_at", "started_at", "finished_at", "error", "traceback",
           "manager", "parent_id")
_MANAGER = ("definition", "params", "rerun_of", "ordinal", "cancelled", "settled", "current", "steps", "end_seq")
_STEP = ("index", "handler_returned", "handler_error", "handler_traceback")
_CHILD = ("step", "depth", "position", "attempt", "retries", "fn", "call", "lost", "attempts")


_OWN = tuple(name for name in _COMMON if name != "manager")
_own = operator.attrgetter(*_OWN)  # every Job sets these in __init__


def values(job: Job, *, new: bool = False) -> dict[str, Any]:
    """The stored fields of a job as Python values. What never changes once a job exists (its
    function, arguments, params, steps) only with `new`."""
    out = dict(zip(_OWN, _own(job), strict=True))
    out["manager"] = job.manager.id
    if job.kind == MANAGER:
        out.update(rerun_of=job.rerun_of, ordinal=job.ordinal, cancelled=job.cancelled, settled=job.settled,
                   current=job.current, end_seq=job.end_seq)
        if new:
            out.update(definition=job.definition, params=job.params_json, steps=[s.id for s in job.steps])
    elif job.kind == STEP:
        out.update(index=job.index, handler_returned=job.handler_returned, handler_error=job.handler_error,
                   handler_traceback=job.handler_traceback)
    else:
        out.update(step=job.step.id, depth=job.depth, position=job.position, attempt=job.attempt,
                   retries=job.retries, lost=job.lost, attempts=job.attempts)
        if new:
            out.update(fn=job.fn if isinstance(job.fn, str) else callable_name(job.fn), call=call_json(job))
    if job.kind != CHILD:
        out.update(total=job.total, log_count=job.log_count, c0=job.counts[0], c1=job.counts[1],
                   c2=job.counts[2], c3=job.counts[3], c4=job.counts[4])
    return out


_NO_ARGUMENTS = dumps({"args": [], "kwargs": {}})


def call_json(child: Job) -> str:
    """A child's arguments as stored (`call`): `{"args": [...], "kwargs": {...}}`."""
    if not child.args and not child.kwargs:
        return _NO_ARGUMENTS
    return dumps({"args": list(child.args), "kwargs": child.kwargs})


_encode_str = json.encoder.encode_basestring  # what json.dumps does to a str (ensure_ascii=False), in C


def field_json(value: Any) -> str:
    """One hash field's JSON text: exactly `encoding.dumps(value)`, with the common scalars
    written without the encoder (this runs for every field of every change)."""
    if value is None:
        return "null"
    kind = type(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is int and -(10**15) < value < 10**15:
        return str(value)
    if kind is str and value.isascii():
        return _encode_str(value)
    return dumps(value)


def fields(job: Job, known: dict[str, Any] | None = None) -> dict[str, str]:
    """All stored fields of a new job, each a JSON text; `known`: its `values(job, new=True)`,
    if made already."""
    out = {name: field_json(value) for name, value in (known or values(job, new=True)).items()}
    if job.kind == MANAGER:
        out["params"] = job.params_json  # JSON already: kept as is, read only when shown
    return out


_CONSTANTS = {b"null": None, b"true": True, b"false": False}
_NUMBER_START = frozenset(b"-0123456789")


def value(raw: bytes) -> Any:
    """One field's JSON, with the common shapes (null, booleans, numbers, plain strings) read
    without the JSON parser (which reads a number with `int` or `float` too)."""
    if raw in _CONSTANTS:
        return _CONSTANTS[raw]
    if raw[:1] == b'"' and b"\\" not in raw:
        return raw[1:-1].decode()
    if raw.isdigit():
        return int(raw)
    if raw and raw[0] in _NUMBER_START:
        return float(raw) if b"." in raw or b"e" in raw or b"E" in raw else int(raw)
    return json.loads(raw)


def _decode(raw: dict) -> dict[str, Any]:
    out = {(k.decode() if isinstance(k, bytes) else k): value(v) for k, v in raw.items() if k != b"params"}
    if b"params" in raw:
        out["params"] = raw[b"params"].decode()
    return out


def pairs(flat: list) -> dict:
    """A flat `HGETALL` reply (field, value, field, value…) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def job_from(raw: dict, logs_per_step: int) -> Job:
    """A Job from its hash (not yet linked to its manager and step)."""
    data = _decode(raw)
    job = Job(data["kind"], data["name"], data["created_at"])
    for name in _COMMON:
        if name not in ("kind", "name", "created_at", "manager"):  # the id too: Job() made a new one
            setattr(job, name, data.get(name))
    if job.kind != CHILD:
        job.total, job.log_count = data["total"], data["log_count"]
        job.counts = [data[f"c{i}"] for i in range(5)]
        job.bucket = LogBucket(logs_per_step)
    if job.kind == MANAGER:
        job.definition, job.params_json, job.rerun_of = data["definition"], data["params"], data["rerun_of"]
        job.params = None  # decoded by `with_params` where it is shown
        job.ordinal, job.cancelled, job.settled = data["ordinal"], data["cancelled"], data["settled"]
        job.current, job.end_seq = data["current"], data["end_seq"]
        job.manager, job.step, job.index = job, None, None
        job.steps, job.children = [], []
    elif job.kind == STEP:
        job.index, job.handler_returned = data["index"], data["handler_returned"]
        job.handler_error, job.handler_traceback = data["handler_error"], data["handler_traceback"]
        job.step = job
    else:
        call = json.loads(data["call"])
        job.depth, job.position = data["depth"], data["position"]
        job.attempt, job.retries = data["attempt"], data["retries"]
        job.fn, job.args, job.kwargs, job.lost = data["fn"], tuple(call["args"]), call["kwargs"], data["lost"]
        job.attempts = tuple(data.get("attempts") or ())  # absent in a child stored before it was kept
    if job.kind == CHILD:
        job.step = data["step"]  # its id, until `link_child` links the step itself
    return job


def with_params(manager: Job) -> Job:
    """The manager with its params decoded (what a snapshot of it shows)."""
    if manager.params is None:
        manager.params = json.loads(manager.params_json)
    return manager


def manager_with_steps(manager_raw: dict, steps_raw: list[dict], logs_per_step: int) -> Job:
    """A manager Job with its steps linked."""
    manager = job_from(manager_raw, logs_per_step)
    for raw in steps_raw:
        step = job_from(raw, logs_per_step)
        step.manager, step.parent_id = manager, manager.id
        manager.steps.append(step)
    return manager


def link_child(child: Job, manager: Job) -> Job:
    child.manager = manager
    step_id = child.step
    child.step = next(s for s in manager.steps if s.id == step_id)
    return child


# ---------------------------------------------------------------- events

def fill_ids(event: Event, manager: Job) -> list[str]:
    """The jobs whose counters the stored event carries as committed (not as this process saw
    them): the step or manager of a progress event, the log's owner and manager, a manager's
    status with its steps."""
    if event.type == "step_progress":
        return [event.key]  # type: ignore[list-item]
    if event.type == "job_progress":
        return [manager.id]
    if event.type == "log":
        return [event.data["step_id"] or manager.id, manager.id]
    if event.type == "job_status" and event.data["kind"] == MANAGER:
        return [manager.id, *(s.id for s in manager.steps)]
    return []


def local_counters(job_id: str, jobs: dict[str, Job]) -> list[int]:
    job = jobs[job_id]
    return [job.total, *job.counts, job.log_count]


def event_counters(event: Event, ids: list[str]) -> list[list[int]]:
    """The counters of `ids` as the event's data shows them (what this process computed)."""
    data = event.data
    if event.type in ("step_progress", "job_progress"):
        return [_progress_list(data["progress"], data["log_count"])]
    if event.type == "log":
        return [[0] * 6 + [data["log_count"]], [0] * 6 + [data["manager_log_count"]]]
    job = data["job"]
    return [_progress_list(job["progress"], job["log_count"])] + [
        _progress_list(s["progress"], s["log_count"]) for s in job["steps"]]


def _progress_list(p: dict, log_count: int) -> list[int]:
    return [p["total"], p["pending"], p["running"], p["completed"], p["failed"], p["cancelled"], log_count]


def event_from(entry_id: bytes | str, entry: dict | list) -> Event:
    """An Event from a stream entry (its fields as a dict, or as read: a flat list): its seq is
    the entry id, committed counters are applied."""
    if isinstance(entry, list):
        entry = pairs(entry)
    seq = int((entry_id.decode() if isinstance(entry_id, bytes) else entry_id).partition("-")[0])
    get = entry.get
    type_ = _text(get(b"t", get("t")))
    data = json.loads(get(b"d", get("d")))
    data["seq"] = seq
    fill = _text(get(b"f", get("f")) or b"")
    if fill:
        values = [int(v) for v in fill.split(",")]
        groups = [values[i:i + 7] for i in range(0, len(values), 7)]
        if type_ in ("step_progress", "job_progress"):
            _apply(data, groups[0])
        elif type_ == "log":
            data["log_count"], data["manager_log_count"] = groups[0][6], groups[1][6]
        else:
            _apply(data["job"], groups[0])
            for step, group in zip(data["job"]["steps"], groups[1:], strict=False):
                _apply(step, group)
    key = _text(get(b"k", get("k")) or b"") or None
    return Event(seq, type_, _text(get(b"m", get("m"))), key, data)


def _apply(target: dict, group: list[int]) -> None:
    target["progress"] = progress_dict(group[0], group[1:6])
    target["log_count"] = group[6]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value
