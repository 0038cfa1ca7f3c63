"""Events: one per change, numbered by the store's seq, kept in the replay ring and the journal."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .encoding import dumps

# Progress events carry absolute counts: a later one of the same `key` supersedes an earlier one,
# so streams and the journal may leave the earlier one out (latest wins).
MERGEABLE = frozenset({"step_progress", "job_progress"})


class Event:
    """One change. `key` names what a progress event may be merged with (latest wins).

    `data` is never changed once emitted. It may be made on first read from what the change
    kept (`make(*args)`): most progress events are superseded before anyone reads them. `text`
    is the data's JSON; it is not kept (the ring holds 100,000 events: kept, the text would add
    about 300 bytes to each), and the hub keeps the bytes it sends for as long as it needs them.

    The replay ring keeps the latest events for a long time, so an event holds as few objects
    as it can: the garbage collector walks every one of them, over and over."""

    __slots__ = ("seq", "type", "manager_id", "key", "_data", "_make", "_args")

    def __init__(self, seq: int, type_: str, manager_id: str, key: str | None, data: dict | None,
                 make: Callable[..., dict] | None = None, args: tuple = ()) -> None:
        """`data`, or None and `make`: the data is `make(*args)` with "seq" added, made when
        first read; `args` must not change afterwards (a snapshot of what the change saw)."""
        self.seq = seq
        self.type = type_
        self.manager_id = manager_id
        self.key = key
        self._data = data
        self._make = make
        self._args = args

    @property
    def data(self) -> dict:
        data = self._data
        if data is None:
            data = self._made()
            self._data = data  # two threads reading at once each make an equal dict: either may stay
        return data

    @property
    def text(self) -> str:
        """`data` as the one encoder writes it. Data made only for this is not kept: it can be
        made again, and kept it would be a dozen objects for the garbage collector to walk."""
        data = self._data
        return dumps(data if data is not None else self._made())

    def _made(self) -> dict:
        data = self._make(*self._args)  # type: ignore[misc]
        data["seq"] = self.seq
        return data


def latest_only(events: list[Event]) -> list[Event]:
    """`events` without the progress events that a later one of the same key supersedes (they
    carry absolute counts: latest wins). The one merge rule of streams, the journal and Redis."""
    last: dict[tuple[str, str | None], int] = {}
    superseded = 0
    for event in events:
        if event.type in MERGEABLE:
            key = (event.type, event.key)
            if key in last:
                superseded += 1
            last[key] = event.seq
    if not superseded:
        return events
    return [e for e in events if e.type not in MERGEABLE or last[(e.type, e.key)] == e.seq]


class Gone(Exception):
    """The requested seq is no longer kept (or was never written)."""


class EventSource(Protocol):
    """What the stream hub needs of a store: ids, the seq, wake-ups, events and snapshots."""

    store_id: str  # the first part of every event id: which store (a database, a Redis, a run in memory) made it

    @property
    def seq(self) -> int: ...

    @property
    def visible_seq(self) -> int: ...

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]: ...

    def held_events(self, after: int, limit: int = ...) -> tuple[list[Event], int] | None:
        """`events_after` from memory, never blocking; None when storage must be read."""

    def events_after(self, after: int, limit: int = ...) -> tuple[list[Event], int]:
        """May block on storage: called off the event loop."""

    def stream_snapshot(self, manager_id: str | None, recent: int = ...) -> tuple[dict, bool]:
        """May block on storage: called off the event loop."""

    def ended_by(self, manager_id: str, seq: int) -> bool: ...
