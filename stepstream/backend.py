"""The backend protocol: what the orchestrator, the runners, the hub and the server need of storage.

Two backends implement it: `backends.memory.MemoryStore` (memory, optionally with a SQLite journal) and
`backends.redis.RedisStore` (a Redis shared by many processes). Both apply every change through the
one `engine.Engine`. Calls marked *may block* touch storage (a disk, the network): the server
runs them off its event loop (`offload.Offload`); the rest never block and may run anywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .events import EventSource
from .jobs import Job
from .journal import Journal
from .logs import Record


class Backend(EventSource, Protocol):
    """Jobs, their changes and their reads. Commands that make work runnable return it: the
    memory backend's work runs where it is made; Redis queues it in the commit and returns none."""

    journal: Journal | None
    check_blocks: bool  # whether `check_storage` may block (asks a server) or only reads memory

    @property
    def journal_error(self) -> str | None:
        """Why the journal fails to write, while it does; never blocks."""

    @property
    def storage_error(self) -> str | None:
        """Why storage fails now, or None; never blocks."""

    def check_storage(self) -> str | None:
        """Why storage cannot be used right now, or None. May block (briefly: one probe)."""

    # commands (may block)
    def create_manager(self, definition: str, step_names: list[str], params: dict, *,
                       params_json: str | None = None, rerun_of: str | None = None) -> tuple[Job, list[Job]]: ...

    def add_child(self, fn: Callable[..., Any], args: tuple, kwargs: dict, retries: int, *,
                  step_id: str | None = None, parent_id: str | None = None) -> tuple[Job, list[Job]]: ...

    def begin_child(self, child: Job) -> bool: ...

    def end_child(self, child: Job, error: str | None, traceback: str | None = None,
                  attempt: int | None = None) -> list[Job]: ...

    def handler_returned(self, step: Job, error: str | None, traceback: str | None = None) -> list[Job]: ...

    def log(self, job_id: str, level: str, message: str) -> Record | None: ...

    def cancel(self, job_id: str) -> Job: ...

    def cancelled(self, job: Job) -> bool: ...

    def delete(self, job_id: str) -> None: ...

    def cancel_for_shutdown(self) -> list[str]:
        """This process stops: cancel the jobs that stop with it; their ids."""

    def abandon(self, manager_id: str, reason: str) -> None: ...

    def wait_visible(self, seq: int, timeout: float | None = 30) -> bool: ...

    def close(self) -> None: ...

    # reads (may block)
    def snapshot(self, job_id: str) -> dict: ...

    def wait(self, job_id: str, timeout: float | None) -> dict: ...

    def definition_and_params(self, job_id: str) -> tuple[str, dict]: ...

    def list_managers(self, status: str | None = None, limit: int = 50, cursor: int | None = None, *,
                      definition: str | None = None, q: str | None = None) -> dict: ...

    def children(self, job_id: str, step: str | None = None, status: str | None = None, limit: int = 100,
                 cursor: int = 0) -> dict: ...

    def logs(self, job_id: str, step: str | None = None, level: str = "debug", after: int = 0, limit: int = 1000,
             before: int | None = None, q: str | None = None) -> dict: ...

    def stats(self) -> dict: ...

    def running_managers(self) -> list[str]: ...
