"""The JSON shapes of jobs, as pure functions of the store's `Job` objects.

One shape per kind, the same in snapshots, listings, events and the API. Callers hold the
store's lock; nothing here changes a job.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

from .encoding import call_summary
from .model import CHILD, MANAGER, STEP, iso


def step_json(s: Any) -> dict:
    return {
        "id": s.id, "name": s.name, "index": s.index, "status": s.status,
        "progress": s.progress(), "log_count": s.log_count, "started_at": iso(s.started_at),
        "finished_at": iso(s.finished_at), "error": s.error, "traceback": s.traceback,
    }  # fmt: skip


def manager_json(m: Any, *, params: bool = True) -> dict:
    """A manager job with its steps; `params=False` gives the summary that streams carry (its
    size does not grow with the params)."""
    job = {
        "id": m.id, "kind": MANAGER, "definition": m.definition, "status": m.status,
        "created_at": iso(m.created_at), "started_at": iso(m.started_at),
        "finished_at": iso(m.finished_at), "error": m.error, "traceback": m.traceback,
        "rerun_of": m.rerun_of, "current_step": m.steps[m.current].name,
        "progress": m.progress(), "log_count": m.log_count, "settled": m.settled,
        "steps": [step_json(s) for s in m.steps],
    }  # fmt: skip
    if params:
        job["params"] = m.params
    return job


def child_json(c: Any) -> dict:
    return child_json_of(child_fields(c))


# What a child's JSON is made of, as a tuple: a snapshot that `child_json_of` makes the JSON of,
# now or later (a child status event's data is made when first read). Plain values only, no job
# objects: such a tuple is one the garbage collector stops following.
_CHILD_FIELDS = attrgetter("id", "name", "summary", "status", "manager.id", "step.id", "step.name", "parent_id",
                           "depth", "attempt", "retries", "attempts", "created_at", "started_at", "finished_at",
                           "error", "traceback")


def child_fields(c: Any) -> tuple:
    fields = _CHILD_FIELDS(c)
    if fields[2] is None:  # no summary kept (a child read back from an older journal): made now, from its call
        fields = (fields[0], fields[1], call_summary(c.args, c.kwargs), *fields[3:])
    return fields


def child_json_of(fields: tuple) -> dict:
    (id_, name, summary, status, manager_id, step_id, step_name, parent_id, depth, attempt, retries, attempts,
     created_at, started_at, finished_at, error, traceback) = fields
    return {
        "id": id_, "kind": CHILD, "name": name, "summary": summary, "status": status,
        "manager_id": manager_id, "step_id": step_id, "step_name": step_name,
        "parent_id": parent_id, "depth": depth, "attempt": attempt, "retries": retries,
        "attempts": list(attempts),
        "created_at": iso(created_at), "started_at": iso(started_at),
        "finished_at": iso(finished_at), "error": error, "traceback": traceback,
    }  # fmt: skip


def child_status_of(fields: tuple) -> dict:
    """The data of a child's `job_status` event (without its seq), from `child_fields`."""
    return {"job_id": fields[0], **child_json_of(fields)}


def job_json(job: Any) -> dict:
    """Any job as `GET /api/jobs/{id}` shows it."""
    if job.kind == MANAGER:
        return manager_json(job)
    if job.kind == STEP:
        return step_as_job(step_json(job), {"id": job.manager.id, "definition": job.manager.definition})
    return child_json(job)


def step_as_job(step: dict, manager: dict) -> dict:
    """A step's JSON (as in its manager's `steps`) as `GET /api/jobs/{step_id}` shows it."""
    return {**step, "kind": STEP, "manager_id": manager["id"], "step_id": step["id"], "step_name": step["name"],
            "parent_id": manager["id"], "definition": manager["definition"]}


def status_event(job: Any) -> dict:
    """The data of a `job_status` event (without its seq)."""
    manager = job.manager
    if job.kind == MANAGER:
        return {"job_id": job.id, "kind": MANAGER, "manager_id": job.id, "status": job.status,
                "error": job.error, "job": manager_json(job, params=False)}
    if job.kind == STEP:
        return {"job_id": job.id, "kind": STEP, "manager_id": manager.id, "step_id": job.id,
                "step_name": job.name, "index": job.index, "status": job.status,
                "started_at": iso(job.started_at), "finished_at": iso(job.finished_at),
                "error": job.error, "traceback": job.traceback}
    return {"job_id": job.id, **child_json(job)}
