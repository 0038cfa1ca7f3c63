"""The JSON shapes of jobs, as pure functions of the store's `Job` objects.

One shape per kind, the same in snapshots, listings, events and the API. Callers hold the
store's lock; nothing here changes a job.
"""

from __future__ import annotations

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
    return {
        "id": c.id, "kind": CHILD, "name": c.name,
        "summary": c.summary if c.summary is not None else call_summary(c.args, c.kwargs), "status": c.status,
        "manager_id": c.manager.id, "step_id": c.step.id, "step_name": c.step.name,
        "parent_id": c.parent_id, "depth": c.depth, "attempt": c.attempt, "retries": c.retries,
        "attempts": list(c.attempts),
        "created_at": iso(c.created_at), "started_at": iso(c.started_at),
        "finished_at": iso(c.finished_at), "error": c.error, "traceback": c.traceback,
    }  # fmt: skip


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
