"""Jobs, statuses and progress: the status rules of stepstream as pure functions.

Every rule of the contract's "Status rules" section lives in exactly one function here;
`backends/memory.py` applies them under its lock and nothing else re-derives a status.
"""

from __future__ import annotations

import time

PENDING = "pending"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
SKIPPED = "skipped"

STATUSES = (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, SKIPPED)
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED, SKIPPED})

MANAGER = "manager"
STEP = "step"
CHILD = "child"

# Progress counters are a list indexed by these positions (plus a separate total), so a
# transition is two integer updates on the step and two on the manager: O(1) whatever the size.
COUNTED = (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED)
SLOT = {status: i for i, status in enumerate(COUNTED)}

# Allowed status changes per kind of job. A child may go back to pending for a retry.
_TRANSITIONS = {
    CHILD: {
        PENDING: {RUNNING, CANCELLED},
        RUNNING: {COMPLETED, FAILED, CANCELLED, PENDING},
    },
    STEP: {
        PENDING: {RUNNING, SKIPPED, CANCELLED},
        RUNNING: {COMPLETED, FAILED, CANCELLED},
    },
    MANAGER: {
        PENDING: {RUNNING, CANCELLED},
        RUNNING: {COMPLETED, FAILED, CANCELLED},
    },
}


class StepstreamError(Exception):
    """Base class for errors raised by stepstream on bad use."""


class NotFound(StepstreamError, KeyError):
    """An unknown job or definition."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class Conflict(StepstreamError):
    """The operation does not fit the job's current status (e.g. it is already terminal)."""


class InvalidRequest(StepstreamError, ValueError):
    """A request that names a job of the wrong kind or an impossible combination."""


class InvalidParams(StepstreamError, ValueError):
    """Params that are not strict JSON within the limits, or that the definition rejects."""


class InvalidTransition(Conflict):
    """A status change that the rules do not allow."""


class MissingDependency(StepstreamError, ImportError):
    """A part of stepstream was used without the optional dependency it needs; the message names
    the extra that installs it (the Redis backend: `pip install 'stepstream[redis]'`)."""


def can_transition(kind: str, old: str, new: str) -> bool:
    """True if a job of `kind` may go from `old` to `new`. Terminal statuses never change."""
    return new in _TRANSITIONS[kind].get(old, ())


def is_terminal(status: str) -> bool:
    return status in TERMINAL


def step_is_done(handler_returned: bool, counts: list[int]) -> bool:
    """A step finishes when its handler has returned and nothing inside it is pending or running."""
    return handler_returned and counts[SLOT[PENDING]] == 0 and counts[SLOT[RUNNING]] == 0


def step_outcome(handler_failed: bool, manager_cancelled: bool, total: int, counts: list[int]) -> str:
    """The terminal status of a finished step.

    Cancellation wins (the user asked to stop, so later outcomes are not the step's verdict);
    then `failed` if the handler raised or it had children and all of them failed;
    otherwise `completed`, even with some failed children (the counts show them).
    """
    if manager_cancelled:
        return CANCELLED
    if handler_failed or (total > 0 and counts[SLOT[FAILED]] == total):
        return FAILED
    return COMPLETED


def manager_outcome(step_status: str, is_last_step: bool) -> str | None:
    """The manager's status after one of its steps finished, or None if it keeps running."""
    if step_status == FAILED:
        return FAILED
    if step_status == CANCELLED:
        return CANCELLED
    return COMPLETED if is_last_step else None


def child_retry(failed: bool, attempt: int, retries: int, cancelled: bool) -> bool:
    """A failed child with retries left goes back to pending, unless its job was cancelled."""
    return failed and not cancelled and attempt <= retries


def child_outcome(failed: bool, cancelled: bool) -> str:
    """The terminal status of a child's last attempt: a cancel wins, then how it ended."""
    if cancelled:
        return CANCELLED
    return FAILED if failed else COMPLETED


def is_settled(status: str, step_statuses: list[str]) -> bool:
    """A manager is settled when it and every one of its steps are terminal: nothing about it
    will change again (what `settled` on the wire says, so no client derives it)."""
    return is_terminal(status) and all(is_terminal(s) for s in step_statuses)


MAX_LOST_ATTEMPTS = 3  # a child whose worker vanished this many times fails instead of running again


def child_rerun_lost(lost: int, cancelled: bool) -> bool:
    """A child whose worker vanished mid-attempt (a shared deployment) runs again as a new
    attempt, not counted against its retries, up to `MAX_LOST_ATTEMPTS` losses."""
    return not cancelled and lost < MAX_LOST_ATTEMPTS


def progress_dict(total: int, counts: list[int]) -> dict[str, int]:
    """The JSON shape of progress; `total` always equals the sum of the other five."""
    return {
        "total": total,
        "pending": counts[0],
        "running": counts[1],
        "completed": counts[2],
        "failed": counts[3],
        "cancelled": counts[4],
    }


def iso(ts: float | None) -> str | None:
    """ISO 8601 UTC with milliseconds, e.g. `2026-11-21T06:16:00.123Z`."""
    if ts is None:
        return None
    secs = int(ts)
    millis = int((ts - secs) * 1000)
    seconds = _SECONDS.get(secs)
    if seconds is None:
        if len(_SECONDS) >= 4096:
            _SECONDS.clear()
        seconds = _SECONDS[secs] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    return seconds + (_MILLIS[millis] if 0 <= millis < 1000 else f".{millis:03d}Z")


_SECONDS: dict[int, str] = {}  # the text of each second written lately (a job's times span a few)
_MILLIS = tuple(f".{n:03d}Z" for n in range(1000))


LEVELS = ("debug", "info", "warning", "error")
LEVEL_RANK = {name: i for i, name in enumerate(LEVELS)}


def level_rank(level: str) -> int:
    """Rank of a log level name; raises ValueError for an unknown one."""
    try:
        return LEVEL_RANK[level]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}") from None
