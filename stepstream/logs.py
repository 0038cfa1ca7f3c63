"""Log records and their bounded storage per step (the bridge from `logging` is `logbridge`).

A log line is stored once, in the bucket of the step it belongs to (a manager has one bucket of
its own for lines not inside any step). A step's query reads its bucket; a manager's query merges
its buckets by seq; a child's query filters its step's bucket by job id.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

from .model import LEVEL_RANK
from .text import clean

Record = dict[str, Any]


def _seq(record: Record) -> int:
    return record["seq"]


class LogBucket:
    """The lines of one step (its own and its children's), ascending seq, the newest `cap` kept.

    `count` is every line ever written; `dropped` how many of the oldest were let go to keep
    memory bounded, so `count - dropped` lines can be read back.
    """

    __slots__ = ("records", "count", "dropped", "cap")

    def __init__(self, cap: int) -> None:
        self.records: list[Record] = []
        self.count = 0
        self.dropped = 0
        self.cap = cap

    def append(self, record: Record) -> None:
        self.records.append(record)
        self.count += 1
        # Trim in chunks so the amortised cost per line stays O(1).
        excess = len(self.records) - self.cap
        if excess > self.cap // 4:
            del self.records[:excess]
            self.dropped += excess

    def after(self, seq: int) -> Iterator[Record]:
        """Lines with seq > `seq`, ascending."""
        start = bisect_right(self.records, seq, key=_seq)
        return islice(self.records, start, None)

    def before(self, seq: int) -> Iterator[Record]:
        """Lines with seq < `seq`, descending."""
        end = bisect_left(self.records, seq, key=_seq)
        return (self.records[i] for i in range(end - 1, -1, -1))


def line_matches(text: str, message: str) -> bool:
    """What a log search finds: the lines that contain `text`, whatever the case (text that
    cannot be stored is compared as it is stored, with its replacement character)."""
    return clean(text).lower() in message.lower()


def query(
    buckets: Iterable[LogBucket],
    *,
    after: int = 0,
    before: int | None = None,
    min_level: str = "debug",
    job_id: str | None = None,
    limit: int = 1000,
    text: str | None = None,
) -> tuple[list[Record], int | None]:
    """At most `limit` lines with `after` < seq (< `before`) at `min_level` or above, ascending.

    Without `before`, the oldest such lines and the cursor for the next page (`after=`, the last
    seq returned); with `before`, the newest such lines and the cursor for the page before them
    (`before=`, the first seq returned). The cursor is None when there is nothing more.
    """
    rank = LEVEL_RANK[min_level]
    backwards = before is not None
    streams = [b.before(before) if backwards else b.after(after) for b in buckets]  # type: ignore[arg-type]
    if len(streams) == 1:
        merged: Iterable[Record] = streams[0]
    else:
        merged = heapq.merge(*streams, key=_seq, reverse=backwards)
    out: list[Record] = []
    more = False
    for record in merged:
        if backwards and record["seq"] <= after:
            break
        if LEVEL_RANK[record["level"]] < rank or (job_id is not None and record["job_id"] != job_id) or (
                text is not None and not line_matches(text, record["message"])):
            continue
        if len(out) == limit:
            more = True
            break
        out.append(record)
    if backwards:
        out.reverse()
    if not more or not out:
        return out, None
    return out, out[0]["seq"] if backwards else out[-1]["seq"]
