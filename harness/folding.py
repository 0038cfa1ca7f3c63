"""Fold stream events into a snapshot, as a client does: what the stream promises to keep exact."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

Event = dict[str, Any]


def fold(job: dict, events: Iterable[tuple[str, Event]]) -> dict:
    """Apply (type, data) events for `job` (a manager's snapshot JSON) in order; return the result."""
    job = copy.deepcopy(job)
    steps = {s["name"]: s for s in job["steps"]}
    for type_, data in events:
        if data.get("manager_id") != job["id"]:
            continue
        if type_ == "job_status" and data["kind"] == "manager":
            # the event carries the job without its params, which never change
            job = {**job, **copy.deepcopy(data["job"])}
            steps = {s["name"]: s for s in job["steps"]}
        elif type_ == "job_status" and data["kind"] == "step":
            step = steps[data["step_name"]]
            for key in ("status", "started_at", "finished_at", "error", "traceback"):
                step[key] = data[key]
            if data["status"] == "running":
                job["current_step"] = data["step_name"]
        elif type_ == "step_progress":
            step = steps[data["step_name"]]
            step["status"], step["progress"], step["log_count"] = data["status"], data["progress"], data["log_count"]
        elif type_ == "job_progress":
            job["progress"], job["log_count"] = data["progress"], data["log_count"]
        elif type_ == "end":
            job["settled"], job["finished_at"] = True, data.get("finished_at", job["finished_at"])
        elif type_ == "log":
            job["log_count"] = data["manager_log_count"]
            if data["step_name"] is not None:
                steps[data["step_name"]]["log_count"] = data["log_count"]
    return job


def check_progress(progress: dict) -> None:
    """The sum invariant, and no negative count."""
    parts = [progress[k] for k in ("pending", "running", "completed", "failed", "cancelled")]
    assert min(parts) >= 0, progress
    assert progress["total"] == sum(parts), progress
