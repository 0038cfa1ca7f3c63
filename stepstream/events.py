"""Events: one per change, numbered by the store's seq, kept in the replay ring and the journal."""

from __future__ import annotations


class Event:
    """One change. `key` names what a progress event may be merged with (latest wins)."""

    __slots__ = ("seq", "type", "manager_id", "key", "data", "encoded")

    def __init__(self, seq: int, type_: str, manager_id: str, key: str | None, data: dict) -> None:
        self.seq = seq
        self.type = type_
        self.manager_id = manager_id
        self.key = key
        self.data = data
        self.encoded: bytes | None = None  # the SSE bytes, made once by the hub and shared by all connections


class Gone(Exception):
    """The requested seq is no longer kept (or was never written)."""
