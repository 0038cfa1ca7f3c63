"""Reads of finished jobs that memory let go of and only the journal still holds: a job's JSON,
its children and its logs, in the same shapes as the store's own reads."""

from __future__ import annotations

from . import queries, wire
from .journal import Journal
from .model import CHILD, MANAGER, NotFound


class History:
    def __init__(self, journal: Journal | None) -> None:
        self.journal = journal

    def job(self, job_id: object) -> dict:
        """Any job's JSON, as `GET /api/jobs/{id}` shows it; NotFound."""
        journal = self.journal
        manager_id = journal.manager_of(job_id) if journal is not None and isinstance(job_id, str) else None
        manager = journal.manager(manager_id) if manager_id is not None else None  # type: ignore[union-attr]
        if manager is None:
            raise NotFound(f"no job with id {job_id!r}")
        if manager_id == job_id:
            return manager
        for step in manager["steps"]:
            if step["id"] == job_id:
                return wire.step_as_job(step, manager)
        child = journal.child(job_id)  # type: ignore[union-attr, arg-type]
        if child is None:
            raise NotFound(f"no job with id {job_id!r}")
        return child

    def manager(self, job_id: str, action: str) -> dict:
        """A manager job's JSON; InvalidRequest naming its manager for any other kind."""
        job = self.job(job_id)
        queries.require_manager(job_id, job["kind"], job.get("manager_id", job_id), action)
        return job

    def _step(self, job_id: str, step: str | None) -> tuple[dict, str | None]:
        """(the job's JSON, the id of the step it names or is in, or None for a whole manager)."""
        job = self.job(job_id)
        if job["kind"] == MANAGER:
            if step is None:
                return job, None
            return job, queries.step_named(job_id, job["steps"], step, lambda s: s["name"])["id"]
        queries.check_logs_request(job_id, job["kind"], job["step_name"], step)
        return job, job["step_id"]

    def children(self, job_id: str, step: str | None, status: str | None, limit: int, cursor: int) -> dict:
        job = self.job(job_id)
        queries.check_children_request(job_id, job["kind"], job.get("step_name"), step)
        job, step_id = self._step(job_id, step)
        manager_id = job_id if job["kind"] == MANAGER else job["manager_id"]
        children, next_cursor = self.journal.children(  # type: ignore[union-attr]
            manager_id, step_id=step_id, status=status, cursor=cursor, limit=limit)
        return {"children": children, "next": next_cursor}

    def logs(self, job_id: str, step: str | None, rank: int, after: int, limit: int, before: int | None,
             q: str | None = None) -> dict:
        job, step_id = self._step(job_id, step)
        manager_id = job_id if job["kind"] == MANAGER else job["manager_id"]
        records, next_cursor = self.journal.logs(  # type: ignore[union-attr]
            manager_id, step_id=step_id, job_id=job_id if job["kind"] == CHILD else None, min_rank=rank,
            after=after, before=before, limit=limit, text=q)
        return {"logs": records, "next": next_cursor}
