"""The rules of requests about jobs, once, for every backend and for jobs in memory or in a
journal alike: which manager a command must name, a step by its name, and what a children or
log request may ask of which kind of job. They take plain values, so a `Job` and a job's JSON
both fit."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from .model import CHILD, MANAGER, InvalidRequest, NotFound
from .text import clean

T = TypeVar("T")


def require_manager(job_id: str, kind: str, manager_id: str, action: str = "use") -> None:
    """A command on a whole job (cancel, rerun, delete, watch) names a manager; any other job is
    refused with the message that names its manager."""
    if kind != MANAGER:
        raise InvalidRequest(f"job {job_id} is a {kind} job; {action} its manager {manager_id}")


def step_named(manager_id: str, steps: Iterable[T], name: str, name_of: Callable[[T], str]) -> T:
    """The step of manager `manager_id` called `name`; NotFound naming both."""
    for step in steps:
        if name_of(step) == name:
            return step
    raise NotFound(f"job {manager_id} has no step {name!r}")


def check_children_request(job_id: str, kind: str, step_name: str | None, step: str | None) -> None:
    """Children are listed of a manager (optionally one of its steps by `step`) or of a step."""
    if kind == CHILD:
        raise InvalidRequest(f"job {job_id} is a child job; list children of its step or manager")
    if kind != MANAGER and step is not None and step != step_name:
        raise InvalidRequest(f"step {step!r} is not job {job_id}'s step {step_name!r}")


def search_matches(q: str, job_id: str, definition: str) -> bool:
    """What `q` of a job listing finds: any part of a manager's id or of its definition's name,
    whatever the case (an id prefix, as before, among them)."""
    q = clean(q).lower()
    return q in job_id.lower() or q in definition.lower()


def check_logs_request(job_id: str, kind: str, step_name: str | None, step: str | None) -> None:
    """A step or child's logs may name its own step only (a manager's: any of its steps)."""
    if kind != MANAGER and step is not None and step != step_name:
        raise InvalidRequest(f"job {job_id} belongs to step {step_name!r}, not {step!r}")
