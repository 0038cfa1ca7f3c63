"""The SQLite journal: an embedded database file, standard library `sqlite3`, WAL mode.

One writer connection (the store's writer thread) commits each batch in one transaction; readers
use a connection per thread and never block it (WAL). `synchronous=NORMAL`: a commit survives the
process being killed at any moment (what the tests check); `synchronous_full=True` also survives
the machine losing power, at the cost of an fsync per batch.

The schema is versioned with `PRAGMA user_version`; `MIGRATIONS[n]` takes a database from version
n to n + 1, so a database made by any earlier version opens.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Collection
from datetime import datetime
from pathlib import Path

from ..encoding import dumps
from ..events import latest_only
from ..logs import line_matches
from ..model import LEVEL_RANK, LEVELS
from ..queries import search_matches
from ..text import clean
from . import Batch, Loaded, Unsettled

MIGRATIONS: list[str] = [
    # 0 -> 1: the first schema
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE managers (
        id TEXT PRIMARY KEY, ordinal INTEGER NOT NULL UNIQUE, definition TEXT NOT NULL,
        status TEXT NOT NULL, settled INTEGER NOT NULL, end_seq INTEGER, finished_at REAL, job TEXT NOT NULL);
    CREATE TABLE steps (id TEXT PRIMARY KEY, manager_id TEXT NOT NULL);
    CREATE INDEX steps_by_manager ON steps (manager_id);
    CREATE TABLE children (
        id TEXT PRIMARY KEY, manager_id TEXT NOT NULL, step_id TEXT NOT NULL, position INTEGER NOT NULL,
        status TEXT NOT NULL, job TEXT NOT NULL);
    CREATE INDEX children_by_manager ON children (manager_id, position);
    CREATE TABLE logs (
        seq INTEGER PRIMARY KEY, manager_id TEXT NOT NULL, step_id TEXT, job_id TEXT NOT NULL,
        rank INTEGER NOT NULL, ts TEXT NOT NULL, message TEXT NOT NULL, step_name TEXT);
    CREATE INDEX logs_by_manager ON logs (manager_id, seq);
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY, type TEXT NOT NULL, manager_id TEXT NOT NULL, key TEXT, data TEXT NOT NULL);
    """,
    # 1 -> 2: listings filtered by status or definition, and a step's logs, without scanning
    """
    CREATE INDEX managers_by_status ON managers (status, ordinal);
    CREATE INDEX managers_by_definition ON managers (definition, ordinal);
    CREATE INDEX logs_by_step ON logs (step_id, seq);
    """,
    # 2 -> 3: the unfinished managers, found at start without scanning every finished one
    """
    CREATE INDEX managers_unsettled ON managers (ordinal) WHERE settled=0;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
RETENTION_EVERY = 5.0  # seconds between two retention passes


class SchemaError(RuntimeError):
    """The database was made by a newer stepstream, or is not a stepstream database."""


def connect(path: str | Path, *, synchronous_full: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if synchronous_full else 'NORMAL'}")
    conn.execute("PRAGMA foreign_keys=OFF")
    # The search rules themselves, so SQL finds exactly what memory and Redis find.
    conn.create_function("line_matches", 2, line_matches, deterministic=True)
    conn.create_function("search_matches", 3, search_matches, deterministic=True)
    return conn


def _manager_json(text: str, settled: int) -> dict:
    """A manager's JSON as written, with `settled` from its column (rows written before the
    field was on the wire lack it)."""
    job = json.loads(text)
    job["settled"] = bool(settled)
    return job


def _rollback(conn: sqlite3.Connection) -> None:
    """Undo a failed transaction without hiding why it failed: SQLite may already have rolled
    back by itself (a full disk, say), and then ROLLBACK raises an error of its own."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def migrate(conn: sqlite3.Connection, upto: int = SCHEMA_VERSION) -> int:
    """Apply the migrations the database lacks (up to version `upto`); its version after."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SchemaError(f"the database has schema version {version}; this stepstream knows up to "
                          f"{SCHEMA_VERSION}: upgrade stepstream")
    while version < upto:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    conn.execute(statement)
            version += 1
            conn.execute(f"PRAGMA user_version={version}")
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
    return version


class SqliteJournal:
    """See the module docstring. `retain_jobs` / `retain_days` bound the finished jobs kept on
    disk (None: all); `retain_events` the events kept for resuming streams."""

    def __init__(
        self,
        path: str | Path,
        *,
        retain_jobs: int | None = None,
        retain_days: float | None = None,
        retain_events: int = 1_000_000,
        synchronous_full: bool = False,
    ) -> None:
        self.path = Path(path)
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.retain_jobs = retain_jobs
        self.retain_days = retain_days
        self.retain_events = retain_events
        self._synchronous_full = synchronous_full
        self._writer = connect(self.path, synchronous_full=synchronous_full)
        try:
            migrate(self._writer)
        except sqlite3.DatabaseError as exc:
            self._writer.close()
            raise SchemaError(f"{self.path} is not a stepstream database ({exc})") from None
        self._local = threading.local()
        self._last_retention = time.monotonic()

    # ------------------------------------------------------------------ connections

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path)
        return conn

    # ------------------------------------------------------------------ start

    def load(self, new_store_id: str, logs_per_step: int) -> Loaded:
        conn = self._writer
        row = conn.execute("SELECT value FROM meta WHERE key='store_id'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta VALUES ('store_id', ?)", (new_store_id,))
            store_id = new_store_id
        else:
            store_id = row[0]
        seq = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        stored_seq = conn.execute("SELECT value FROM meta WHERE key='seq'").fetchone()
        seq = max(seq, int(stored_seq[0]) if stored_seq else 0)  # events may have been trimmed
        ordinal = conn.execute("SELECT coalesce(max(ordinal), 0) FROM managers").fetchone()[0]
        unsettled = []
        for manager_id, job_text, manager_ordinal in conn.execute(
            "SELECT id, job, ordinal FROM managers WHERE settled=0 ORDER BY ordinal"
        ).fetchall():
            job = json.loads(job_text)
            children = [json.loads(text) for (text,) in conn.execute(
                "SELECT job FROM children WHERE manager_id=? ORDER BY position", (manager_id,))]
            logs: dict[str | None, list[dict]] = {}
            for step_id in [None] + [s["id"] for s in job["steps"]]:
                where = "step_id IS NULL" if step_id is None else "step_id=?"
                args = (manager_id,) if step_id is None else (manager_id, step_id)
                newest = conn.execute(
                    f"SELECT {RECORD} FROM logs WHERE manager_id=? AND {where} ORDER BY seq DESC LIMIT ?",
                    (*args, logs_per_step),
                ).fetchall()
                logs[step_id] = [_record(row) for row in reversed(newest)]
            unsettled.append(Unsettled(job, manager_ordinal, children, logs))
        return Loaded(store_id, seq, ordinal, unsettled)

    # ------------------------------------------------------------------ writes

    def write(self, batch: Batch) -> None:
        """Commit one batch in one transaction."""
        # A progress event superseded by a later one of the same key in this batch is not kept
        # (latest wins, as in the streams): two thirds of the events, and of the writing.
        events = latest_only(batch.events)
        logs = []
        for event in events:
            if event.type == "log":
                data = event.data
                logs.append((event.seq, data["manager_id"], data["step_id"], data["job_id"],
                             LEVEL_RANK[data["level"]], data["ts"], data["message"], data["step_name"]))
        managers = [(mid, ordinal, definition, status, int(settled), end_seq,
                     _finished_at(job), dumps(job)) for mid, ordinal, definition, status, settled, end_seq, job, _
                    in batch.managers]
        steps = [(step_id, m[0]) for m in batch.managers for step_id in m[7]]
        # The rows of events and children, the most numerous, are made one at a time as SQLite
        # takes them: a list of a batch's rows (hundreds of thousands under load) made the garbage
        # collector walk them again and again while they were built.
        event_rows = ((e.seq, e.type, e.manager_id, e.key, e.text) for e in events)
        child_rows = ((cid, mid, sid, position, status, dumps(job))
                      for cid, mid, sid, position, status, job in batch.children)
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?, ?)", event_rows)
            conn.executemany("INSERT OR REPLACE INTO logs VALUES (?, ?, ?, ?, ?, ?, ?, ?)", logs)
            conn.executemany("INSERT OR REPLACE INTO managers VALUES (?, ?, ?, ?, ?, ?, ?, ?)", managers)
            conn.executemany("INSERT OR IGNORE INTO steps VALUES (?, ?)", steps)
            conn.executemany("INSERT OR REPLACE INTO children VALUES (?, ?, ?, ?, ?, ?)", child_rows)
            for manager_id in batch.deleted:
                self._delete(conn, manager_id)
            if batch.events:
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('seq', ?)", (str(batch.last_seq),))
            if time.monotonic() - self._last_retention > RETENTION_EVERY:
                self._retain(conn)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    @staticmethod
    def _delete(conn: sqlite3.Connection, manager_id: str) -> None:
        for table in ("logs", "children", "steps"):
            conn.execute(f"DELETE FROM {table} WHERE manager_id=?", (manager_id,))
        conn.execute("DELETE FROM managers WHERE id=?", (manager_id,))

    def _retain(self, conn: sqlite3.Connection) -> None:
        """Drop finished jobs beyond the retention settings and events beyond `retain_events`.
        Runs on the writer thread every few seconds, never on the changing threads."""
        self._last_retention = time.monotonic()
        doomed: list[str] = []
        if self.retain_jobs is not None:
            doomed += [r[0] for r in conn.execute(
                "SELECT id FROM managers WHERE settled=1 ORDER BY ordinal DESC LIMIT -1 OFFSET ?",
                (self.retain_jobs,))]
        if self.retain_days is not None:
            cutoff = time.time() - self.retain_days * 86400
            doomed += [r[0] for r in conn.execute(
                "SELECT id FROM managers WHERE settled=1 AND finished_at < ?", (cutoff,))]
        for manager_id in dict.fromkeys(doomed):
            self._delete(conn, manager_id)
        floor = conn.execute("SELECT max(seq) FROM events").fetchone()[0]
        if floor is not None and floor > self.retain_events:
            conn.execute("DELETE FROM events WHERE seq <= ?", (floor - self.retain_events,))
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('events_floor', ?)", (str(floor - self.retain_events),))

    # ------------------------------------------------------------------ reads

    def manager(self, manager_id: str) -> dict | None:
        row = self._reader().execute("SELECT job, settled FROM managers WHERE id=?", (manager_id,)).fetchone()
        return _manager_json(*row) if row else None

    def manager_of(self, job_id: str) -> str | None:
        conn = self._reader()
        for query in ("SELECT id FROM managers WHERE id=?", "SELECT manager_id FROM steps WHERE id=?",
                      "SELECT manager_id FROM children WHERE id=?"):
            row = conn.execute(query, (job_id,)).fetchone()
            if row:
                return row[0]
        return None

    def end_seq(self, manager_id: str) -> int | None:
        row = self._reader().execute("SELECT end_seq FROM managers WHERE id=?", (manager_id,)).fetchone()
        return row[0] if row else None

    def count_by_status(self, exclude: Collection[str] = ()) -> dict[str, int]:
        """Finished managers by status, but for those in `exclude`."""
        marks = ",".join("?" * len(exclude))
        rows = self._reader().execute(f"SELECT status, count(*) FROM managers WHERE settled=1 AND id NOT IN ({marks}) "
                                      "GROUP BY status", tuple(exclude))
        return dict(rows.fetchall())

    def child(self, child_id: str) -> dict | None:
        row = self._reader().execute("SELECT job FROM children WHERE id=?", (child_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def list_managers(
        self, *, status: str | None, definition: str | None, q: str | None, before_ordinal: int | None, limit: int
    ) -> list[tuple[int, dict]]:
        where, args = _where(("status=?", status), ("definition=?", definition),
                             ("search_matches(?, id, definition)", None if q is None else clean(q)),
                             ("ordinal<?", before_ordinal))
        rows = self._reader().execute(
            f"SELECT ordinal, job, settled FROM managers WHERE {where} ORDER BY ordinal DESC LIMIT ?", (*args, limit)
        ).fetchall()
        return [(ordinal, _manager_json(text, settled)) for ordinal, text, settled in rows]

    def children(
        self, manager_id: str, *, step_id: str | None, status: str | None, cursor: int, limit: int
    ) -> tuple[list[dict], int | None]:
        where, args = _where(("manager_id=?", manager_id), ("position>=?", cursor), ("step_id=?", step_id),
                             ("status=?", status))
        rows = self._reader().execute(
            f"SELECT position, job FROM children WHERE {where} ORDER BY position LIMIT ?", (*args, limit + 1)
        ).fetchall()
        more = len(rows) > limit
        return [json.loads(text) for _, text in rows[:limit]], (rows[limit][0] if more else None)

    def logs(
        self, manager_id: str, *, step_id: str | None, job_id: str | None, min_rank: int, after: int,
        before: int | None, limit: int, text: str | None = None,
    ) -> tuple[list[dict], int | None]:
        where, args = _where(("manager_id=?", manager_id), ("rank>=?", min_rank), ("seq>?", after),
                             ("step_id=?", step_id), ("job_id=?", job_id), ("seq<?", before),
                             ("line_matches(?, message)", None if text is None else clean(text)))
        order = "DESC" if before is not None else "ASC"
        rows = self._reader().execute(
            f"SELECT {RECORD} FROM logs WHERE {where} ORDER BY seq {order} LIMIT ?", (*args, limit + 1)
        ).fetchall()
        records = [_record(row) for row in rows[:limit]]
        more = len(rows) > limit
        if before is not None:
            records.reverse()
            return records, (records[0]["seq"] if more and records else None)
        return records, (records[-1]["seq"] if more and records else None)

    def events_after(self, seq: int, limit: int) -> list[tuple[int, str, str, str | None, dict]] | None:
        """The events after `seq`, or None if some of them are no longer kept."""
        conn = self._reader()
        floor = conn.execute("SELECT value FROM meta WHERE key='events_floor'").fetchone()
        if floor is not None and seq < int(floor[0]):
            return None  # some of the events after `seq` were let go by retention
        rows = conn.execute("SELECT seq, type, manager_id, key, data FROM events WHERE seq>? ORDER BY seq LIMIT ?",
                            (seq, limit)).fetchall()
        return [(s, t, m, k, json.loads(d)) for s, t, m, k, d in rows]

    def close(self) -> None:
        try:
            self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            pass
        self._writer.close()


RECORD = "seq, ts, rank, message, job_id, step_id, step_name, manager_id"  # a log record's columns


def _record(row: tuple) -> dict:
    """A log record as the API shows it, from the columns `RECORD` names (no JSON to decode)."""
    seq, ts, rank, message, job_id, step_id, step_name, manager_id = row
    return {"seq": seq, "ts": ts, "level": LEVELS[rank], "message": message, "job_id": job_id,
            "step_id": step_id, "step_name": step_name, "manager_id": manager_id}


def _where(*clauses: tuple[str, object]) -> tuple[str, list]:
    """The `WHERE` text and arguments of the clauses whose value is not None (a tuple value
    fills several placeholders)."""
    kept = [(sql, value) for sql, value in clauses if value is not None]
    args: list = []
    for _, value in kept:
        args.extend(value if isinstance(value, tuple) else (value,))
    return " AND ".join(sql for sql, _ in kept) or "1=1", args


def _finished_at(job: dict) -> float | None:
    text = job.get("finished_at")
    return datetime.fromisoformat(text).timestamp() if text else None
