"""Where the store's history is kept: the storage seam.

The store (`stepstream.backends.memory`) holds live jobs, counters, the seq and the replay ring in memory;
a `Journal` is its durable side. The store's writer thread hands it every change in batches
(`write`), in seq order, and the store reads from it what memory no longer holds: finished jobs
beyond `max_finished`, their children and logs, and events older than the ring (`events_after`).
At start `load` tells the store where the seq stands and which jobs were still running when the
process stopped, so they can be settled like any other change.

Backends, one module each: none (`Orchestrator()`: memory only, the default in Python) and
`sqlite` (`Orchestrator(db="path")`, the default of `stepstream serve`). A backend shared by many
processes fits the same protocol.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Batch:
    """Changes since the last batch, in seq order: events (with their log records), the latest
    JSON of each manager and child that changed, and the managers deleted."""

    events: list[Any]  # stepstream.events.Event
    managers: list[tuple[str, int, str, str, bool, int | None, dict, list[str]]]
    # (id, ordinal, definition, status, settled, end_seq, job JSON with params, step ids)
    children: Iterable[tuple[str, str, str, int, str, dict]]  # (id, manager_id, step_id, position, status, JSON),
    # read once
    deleted: list[str] = field(default_factory=list)

    @property
    def last_seq(self) -> int:
        return self.events[-1].seq if self.events else 0


@dataclass
class Unsettled:
    """A manager job that was not finished when the process stopped, as last written."""

    job: dict  # manager JSON with params and steps
    ordinal: int
    children: list[dict]  # child JSON, in creation order
    logs: dict[str | None, list[dict]]  # the newest records per step id (None: the manager's own)


@dataclass
class Loaded:
    store_id: str
    seq: int  # the last seq written
    ordinal: int  # the last manager ordinal written
    unsettled: list[Unsettled]


class Journal(Protocol):
    """The durable side of a store. Writes come from one thread; reads from any."""

    def load(self, new_store_id: str, logs_per_step: int) -> Loaded: ...

    def write(self, batch: Batch) -> None: ...

    def manager(self, manager_id: str) -> dict | None: ...

    def manager_of(self, job_id: str) -> str | None: ...

    def end_seq(self, manager_id: str) -> int | None: ...

    def count_by_status(self, exclude: Collection[str] = ...) -> dict[str, int]: ...

    def child(self, child_id: str) -> dict | None: ...

    def list_managers(
        self, *, status: str | None, definition: str | None, q: str | None, before_ordinal: int | None, limit: int
    ) -> list[tuple[int, dict]]: ...

    def children(
        self, manager_id: str, *, step_id: str | None, status: str | None, cursor: int, limit: int
    ) -> tuple[list[dict], int | None]: ...

    def logs(  # `text`: only the lines that contain it
        self, manager_id: str, *, step_id: str | None, job_id: str | None, min_rank: int, after: int,
        before: int | None, limit: int, text: str | None = ...,
    ) -> tuple[list[dict], int | None]: ...

    def events_after(self, seq: int, limit: int) -> list[tuple[int, str, str, str | None, dict]] | None: ...

    def close(self) -> None: ...
