"""The server-sent events protocol, as stepstream speaks it: event ids and their encoding.

An event id is `<store id>-<seq>`. The store id tells a database (or, in memory, one run of the
process) from another, so an id is only ever resumed by the store that made it.
"""

from __future__ import annotations

from .encoding import dumps

MAX_SEQ_DIGITS = 18  # a seq that could ever be real; a longer one is not worth parsing
KEEP_ALIVE = b": ping\n\n"  # a comment: keeps proxies from closing an idle stream; clients ignore it


def event_id(store_id: str, seq: int) -> str:
    return f"{store_id}-{seq}"


def parse_event_id(value: str | None, store_id: str) -> int | None:
    """The seq of a Last-Event-ID made by store `store_id`, or None (the client gets a fresh
    snapshot) for anything else: another store's id, garbage, a seq of absurd length or
    non-ASCII digits. Never raises."""
    if not value:
        return None
    owner, _, seq = value.strip().rpartition("-")
    if owner != store_id or not (seq.isascii() and seq.isdigit()) or len(seq) > MAX_SEQ_DIGITS:
        return None
    return int(seq)


def encode(event_id_: str, type_: str, data: dict) -> bytes:
    """One SSE event: `id:`, `event:` and a single `data:` line of JSON. Never raises: the
    encoder repairs what strict JSON cannot carry, and its text holds no line break."""
    return encode_text(event_id_, type_, dumps(data))


def encode_text(event_id_: str, type_: str, text: str) -> bytes:
    """`encode` with the data already encoded (`encoding.dumps`, as `Event.text` is)."""
    return f"id: {event_id_}\nevent: {type_}\ndata: {text}\n\n".encode()
