"""The Redis store: the state of every job of a deployment in one Redis, shared by any number of
server and worker processes.

A change (a child ending, a log line, a cancel) is computed in the process where it happens by
the same `MemoryStore` code and `model` rules as in one process: the jobs it needs are loaded (one
script, one seq), applied by the one `Engine`, and the result is committed by one Lua script
that first checks that nothing it was computed from has changed since (else it is computed again
from a fresh read), then writes the jobs, moves the counters, takes one seq per event and appends
the events, the log lines and the work it made runnable — all or nothing. So seq order is commit
order for the whole deployment, and a snapshot read with its seq plus the events after it equals
the state at any later seq, whichever process made each change.

Keys (all under the prefix, `stepstream:` by default): `seq`, `id`, `ordinal`, `events` (stream,
id = seq), `work` (stream + group), `j:<id>` (hash per job), `kids:<manager>` (list of child
ids), `logs:<step or manager>` (stream, id = seq), `managers`/`running`/`finished` (sorted sets
by ordinal), `ended` (finished managers by time), `ends` (stream: managers that ended, for `wait`),
`dropping` (hash: managers being deleted), `statuses` and `counters` (hashes), `once:*`.
"""

from __future__ import annotations

import collections
import json
import logging
import secrets
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis

from ... import model, queries, wire
from ... import params as params_rules
from ...encoding import dumps
from ...engine import Engine, require_manager
from ...events import MERGEABLE, Event, Gone, latest_only
from ...jobs import Job, new_id
from ...logs import LogBucket, Record, line_matches, query
from ...model import CHILD, MANAGER, PENDING, RUNNING, STEP, Conflict, NotFound, iso
from ...text import MAX_LOG_CHARS, bounded, safe_str
from . import codec, scripts
from .spawns import Spawn, SpawnBatch, Spawner
from .tail import Tail
from .workqueue import GROUP, Entry, WorkQueue

logger = logging.getLogger("stepstream")

LOST_HANDLER = "the worker running this step's handler stopped or vanished; the handler is not run again"
LOST_CHILD = "its worker stopped or vanished"
CANCEL_PART = 100  # pending children cancelled per change
MAX_CONFLICTS = 200  # reads and tries of one change that others keep changing under it
OUTAGE = 300.0  # seconds a call keeps retrying while Redis cannot be reached (a restart, say)


def safe_url(url: str) -> str:
    """The URL without its password, to print."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _job_json(job: Job) -> dict:
    """`GET /api/jobs/{id}`'s JSON of a loaded job (a manager's with its params)."""
    return wire.job_json(codec.with_params(job) if job.kind == MANAGER else job)


def _graph(manager: Job) -> dict[str, Job]:
    """A manager's loaded jobs by id: it, its steps and the children loaded with it."""
    return {manager.id: manager, **{s.id: s for s in manager.steps}, **{c.id: c for c in manager.children}}


def _hold(manager: Job, children: list[Job]) -> dict[str, Job]:
    """The jobs of a change this thread starts from what it holds: `manager` (as loaded or
    last committed here), its steps and `children` of it, linked to them."""
    steps = {s.id: s for s in manager.steps}
    for child in children:
        child.manager, child.step = manager, steps[child.step.id]
    manager.children = list(children)
    return _graph(manager)


def _time_left(deadline: float | None, timeout: float | None, job: Job) -> float | None:
    """Seconds left to wait for `job` (None: no limit); TimeoutError once none are."""
    left = None if deadline is None else deadline - time.monotonic()
    if left is not None and left <= 0:
        raise TimeoutError(f"job {job.id} still {job.status} after {timeout} s")
    return left


def _ends(event: Event, job: Job) -> bool:
    """Whether `event` may be the end of `job` (what `wait` reads the job again for)."""
    if event.manager_id != job.manager.id:
        return False
    return event.type in ("end", "job_deleted") or (event.type == "job_status" and event.data["job_id"] == job.id)


@dataclass
class Ended:
    """A child's attempt that returned on this thread, not committed yet (`end_and_take`)."""

    child: Job
    attempt: int
    error: str | None
    traceback: str | None
    finished_at: float


class StorageUnavailable(Exception):
    """Redis could not be reached for longer than the outage allowance."""


class RedisStore:
    """The `MemoryStore` interface (what the orchestrator and the hub use) over a shared Redis."""

    journal = None  # Redis is the durable record itself
    journal_error = None
    storage_error: str | None = None  # set while calls to Redis fail (they are retried)

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "stepstream:",
        replay_size: int = 100_000,
        max_logs_per_step: int = 20_000,
        retain_jobs: int | None = 1000,
        retain_days: float | None = None,
        visibility_timeout: float = 30.0,
        max_args_bytes: int = params_rules.DEFAULT_MAX_BYTES,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.replay_size = replay_size
        self.max_logs_per_step = max_logs_per_step
        self.retain_jobs = retain_jobs
        self.retain_days = retain_days
        self.max_args_bytes = max_args_bytes
        self.redis = redis.Redis.from_url(url, socket_timeout=15, socket_connect_timeout=5,
                                          health_check_interval=10)
        self._commit = self.redis.register_script(scripts.COMMIT)
        self._load = self.redis.register_script(scripts.LOAD)
        self._take = self.redis.register_script(scripts.TAKE)
        self._load_managers = self.redis.register_script(scripts.LOAD_MANAGERS)
        self._prune_script = self.redis.register_script(scripts.PRUNE)
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            raise StorageUnavailable(f"cannot reach Redis at {safe_url(url)}: {exc}") from None
        token = secrets.token_hex(6)
        self.store_id = self._retrying(lambda: self._deployment_id(token))
        self._committed = 0  # the last seq this process committed
        self._listeners: list[Callable[[], None]] = []
        self._tail = Tail(self.redis, prefix + "events", prefix + "seq", codec.event_from, replay_size,
                          self._call_listeners)
        self.work = WorkQueue(self.redis, prefix + "work", visibility_timeout)
        self._cancelled: dict[str, tuple[float, bool]] = {}
        self._spawner = Spawner(self._commit_spawns)

    check_blocks = True

    def check_storage(self) -> str | None:
        """Why Redis cannot be used right now (one PING, not retried), or None."""
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            return f"Redis at {safe_url(self.url)}: {safe_str(exc)}"
        return self.storage_error

    def _deployment_id(self, token: str) -> str:
        self.redis.set(self.prefix + "id", token, nx=True)
        return self.redis.get(self.prefix + "id").decode()

    def _retrying(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`call()`, again and again while Redis cannot be reached (up to `OUTAGE` seconds)."""
        deadline = time.monotonic() + OUTAGE
        delay = 0.05
        while True:
            try:
                answer = call(*args, **kwargs)
                self.storage_error = None
                return answer
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self.storage_error = f"Redis at {safe_url(self.url)} unreachable: {safe_str(exc)}"
                if time.monotonic() > deadline:
                    raise StorageUnavailable(f"Redis at {safe_url(self.url)} unreachable for {OUTAGE:.0f} s: "
                                             f"{exc}") from None
                if delay == 0.05:
                    logger.warning("stepstream: Redis unreachable (%s); retrying", exc)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    # ------------------------------------------------------------------ loading

    def _read(self, job_id: str, *children: str) -> tuple[int, dict[str, Job]]:
        """The seq and, as of it, the manager of `job_id` with its steps, and `job_id` and
        `children` if they are children (all linked). No jobs if it does not exist."""
        if not isinstance(job_id, str):
            return 0, {}
        self._spawner.wait()  # this thread reads what it spawned, like anything else it did
        children = tuple(dict.fromkeys(c for c in children if c != job_id))
        reply = self._retrying(lambda: self._load(args=[self.prefix, job_id, *children]))
        return int(reply[0]), self._graph_from(reply[1:])

    def _graph_from(self, reply: list) -> dict[str, Job]:
        """The jobs of a graph read by a script (manager, its steps, then children), linked."""
        if not reply:
            return {}
        manager = self._manager_from(reply[0], reply[1:])
        jobs = {manager.id: manager, **{s.id: s for s in manager.steps}}
        for raw in reply[1 + len(manager.steps):]:
            child = self._child_from(codec.pairs(raw), manager)
            jobs[child.id] = child
            manager.children.append(child)
        return jobs

    def _child_from(self, raw: dict, manager: Job) -> Job:
        """A child from its hash, linked to `manager` and its step."""
        return codec.link_child(codec.job_from(raw, self.max_logs_per_step), manager)

    def _manager_from(self, manager_flat: list, rest: list) -> Job:
        raw = codec.pairs(manager_flat)
        count = len(json.loads(raw[b"steps"]))
        return codec.manager_with_steps(raw, [codec.pairs(s) for s in rest[:count]], self.max_logs_per_step)

    def _job(self, job_id: str, *children: str) -> tuple[int, dict[str, Job], Job]:
        seq, jobs = self._read(job_id, *children)
        job = jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job with id {job_id!r}")
        return seq, jobs, job

    # ------------------------------------------------------------------ changes

    def _change(self, job_id: str | None, apply: Callable[[Engine, dict[str, Job]], Any], *,
                children: Iterable[str] = (), ordinal: int = 0, known: dict[str, Job] | None = None,
                ack: Entry | list[Entry] | None = None, counter_guard: bool = True) -> Any:
        """Load, apply with the store's own code, commit with guards; again on a conflict.

        `known`: jobs as this process last committed them, tried first instead of a read (the
        guards refuse them if anything they decide on changed since; counters may be behind, as
        events carry the committed ones). `ack`: the work entries this change ends.
        `counter_guard=False`: a status this change sets does not depend on the running step's
        counts staying as read (see `cancel`)."""
        children = list(children)
        acks = [] if ack is None else [ack] if isinstance(ack, Entry) else ack
        for tries in range(MAX_CONFLICTS):
            if known is not None and tries == 0:
                jobs = known
            else:
                jobs = self._job(job_id, *children)[1] if job_id is not None else {}
            before = {i: codec.values(j) for i, j in jobs.items()}
            engine = Engine(dict(jobs), max_logs_per_step=self.max_logs_per_step, ordinal=ordinal)
            result = apply(engine, jobs)
            events = engine.take().events
            if not events and all(codec.values(j) == before.get(i) for i, j in jobs.items()):
                return result  # nothing changed (a late return, say)
            change, payloads, probe, settled = self._compose(engine, jobs, before, events, secrets.token_hex(8),
                                                             counter_guard)
            if acks:
                change["ack"] = [entry.id.decode() for entry in acks]
            reply = self._retrying(self._commit, args=[self.prefix, dumps(change), *payloads])
            if reply[0] == b"conflict":
                if tries > 5:
                    time.sleep(min(0.05, 0.001 * tries))
                continue
            for entry in acks:
                self.work.drop(entry)  # acknowledged with the change
            if reply[0] == b"ok":
                self._committed = max(self._committed, int(reply[1]))
                self._after_commit(reply[2], probe, settled)
            else:  # applied already, its reply lost: the step's read-back is done by the next change
                self._after_commit([], None, settled)
            return result
        raise Conflict("the job kept changing while this change was computed; try again")

    def _compose(self, engine: Engine, jobs: dict[str, Job], before: dict[str, dict[str, Any]],
                 events: list[Event], once: str, counter_guard: bool = True
                 ) -> tuple[dict, list[str], str | None, list[Job]]:
        events = latest_only(events)  # a batch of 200 spawns stores 2 progress events, not 400
        after = engine.jobs
        sets: list[list] = []
        incrs: list[list] = []
        guards: list[list] = []
        kids: list[list] = []
        zadd: list[list] = []
        zrem: list[list] = []
        delete: list[str] = []
        counted = collections.Counter(engine.counters)
        for kind in MERGEABLE:  # the progress events kept, not the ones computed (the metric counts events emitted)
            counted[kind] = sum(1 for e in events if e.type == kind)
        counters: list[list] = [["counters", name, n] for name, n in counted.items() if n]
        seqset: list[list] = []
        work: list[list[str]] = []
        settled: list[Job] = []
        manager = next((j for j in jobs.values() if j.kind == MANAGER), None)
        if manager is None:  # a new manager: it is among the created jobs
            manager = next(j for j in after.values() if j.kind == MANAGER)
        shaken = False  # did a step or the manager change status (a decision on the counters)?
        for job_id, job in after.items():
            old = before.get(job_id)
            now = codec.values(job, new=old is None)
            if old is None:  # created by this change
                sets.append([job_id, [x for pair in codec.fields(job, now).items() for x in pair]])
                if job.kind == CHILD:
                    kids.append([manager.id, job_id])
                elif job.kind == MANAGER:
                    zadd += [["managers", job.ordinal, job_id], ["running", job.ordinal, job_id]]
            else:
                changed = {k: v for k, v in now.items() if old.get(k) != v and k not in codec.COUNTERS}
                changed.pop("position", None)  # only the commit knows a child's place
                if job.kind != CHILD:
                    for name in codec.COUNTERS:
                        delta = now[name] - old[name]
                        if delta:
                            incrs.append([job_id, name, delta])
                if job.kind != CHILD and "status" in changed:
                    shaken = True
                if changed:
                    pairs = [x for name, value in changed.items() for x in (name, codec.field_json(value))]
                    sets.append([job_id, pairs])
            status_changed = old is None or old["status"] != now["status"] or old.get("attempt") != now.get("attempt")
            if job.kind == STEP and job.status == RUNNING and status_changed:
                work.append(WorkQueue.fields("step", job_id, 1))
            elif job.kind == CHILD and job.status == PENDING and status_changed:
                work.append(WorkQueue.fields("child", job_id, job.attempt))
            if job.kind == MANAGER and job.settled and (old is None or old["settled"] != now["settled"]):
                settled.append(job)
                ended = next(i for i, e in enumerate(events, 1) if e.type == "end")
                seqset.append([job_id, "end_seq", ended])
                zrem.append(["running", job_id])
                zadd += [["finished", job.ordinal, job_id], ["ended", job.finished_at or time.time(), job_id]]
                counters.append(["statuses", job.status, 1])
        for job_id, old in before.items():
            for name in ("status", "attempt", "cancelled", "handler_returned"):
                if name in old:
                    guards.append([job_id, name, codec.field_json(old[name])])
            if job_id not in after:  # deleted by this change
                job = jobs[job_id]
                if job.kind == MANAGER:
                    delete.append(f"j:{job_id}")
                    zrem += [["managers", job_id], ["finished", job_id], ["ended", job_id]]
                    counters.append(["statuses", job.status, -1])
        current = None  # the step that was running before this change
        if manager.id in before and not before[manager.id]["settled"]:
            current = manager.steps[before[manager.id]["current"]]
        if shaken and current is not None and counter_guard:
            guards += [[current.id, name, codec.field_json(before[current.id][name])] for name in ("total", "c0", "c1")]
        specs: list[list] = []
        payloads: list[str] = []
        for event in events:
            fills = []
            ids = codec.fill_ids(event, manager)
            if ids:
                shown = codec.event_counters(event, ids)
                for job_id, seen in zip(ids, shown, strict=True):
                    final = codec.local_counters(job_id, after)
                    fills.append([job_id, *(f - s for f, s in zip(final, seen, strict=True))])
            data = {k: v for k, v in event.data.items() if k != "seq"}
            bucket = (data["step_id"] or manager.id) if event.type == "log" else False
            specs.append([event.type, event.manager_id, event.key or "", fills, bucket])
            payloads.append(dumps(data))
        for job_id, _, _ in seqset:
            for entry in sets:
                if entry[0] == job_id and "end_seq" in entry[1][::2]:
                    at = entry[1].index("end_seq")
                    del entry[1][at:at + 2]
        sets = [entry for entry in sets if entry[1]]
        grouped: dict[str, tuple[list[str], list[str]]] = {}
        for job_id, name, value in guards:
            names, values = grouped.setdefault(job_id, ([], []))
            names.append(name)
            values.append(value)
        change = {
            "once": once, "guards": [[job_id, names, values] for job_id, (names, values) in grouped.items()],
            "set": sets, "incr": incrs, "kids": kids, "zadd": zadd, "zrem": zrem,
            "del": delete, "counters": counters, "events": specs, "seqset": seqset, "work": work,
            "keep": self.replay_size, "logs": self.max_logs_per_step,
        }
        probe = current.id if current is not None else None
        if probe is not None:
            change["probe"] = probe
        return change, payloads, probe, settled

    def _finish_step(self, step_id: str) -> None:
        """Finish the step if its handler returned and its children all ended."""
        self._change(step_id, lambda s, jobs: s.finish_step_if_done(jobs[step_id]))

    def _after_commit(self, probe_reply: list, probe: str | None, settled: list[Job]) -> None:
        """Finish a step this change left done (its last children may have ended elsewhere at the
        same time), and let go of finished jobs beyond the retention."""
        if probe is not None and len(probe_reply) == 4:
            status, returned, pending, running = (codec.value(v) if v is not None else None for v in probe_reply)
            if status == RUNNING and model.step_is_done(bool(returned), [pending or 0, running or 0, 0, 0, 0]):
                self._finish_step(probe)
        if settled:
            self._prune()

    # ------------------------------------------------------------------ commands

    def create_manager(self, definition: str, step_names: list[str], params: dict, *,
                       params_json: str | None = None, rerun_of: str | None = None) -> tuple[Job, list[Job]]:
        ordinal = int(self._retrying(lambda: self.redis.incr(self.prefix + "ordinal")))
        made = self._change(None, lambda s, jobs: s.create_manager(
            definition, step_names, params, params_json=params_json, rerun_of=rerun_of), ordinal=ordinal)
        return made[0], []  # the first step's handler is queued for a worker by the commit

    def add_child(self, fn: Callable[..., Any], args: tuple, kwargs: dict, retries: int, *,
                  step_id: str | None = None, parent_id: str | None = None) -> tuple[Job, list[Job]]:
        """A new pending child. A thread's first spawn on a link is committed at once; its next
        ones are queued and committed in batches (`spawns`): their child is returned at once."""
        name = codec.callable_name(fn)
        if name is None:
            raise TypeError(f"{fn!r} cannot run on other workers: a child of a Redis deployment must be a "
                            "module-level function of a module the workers import (not a lambda, a closure or "
                            "something defined in __main__)")
        params_rules.validate({"args": list(args), "kwargs": kwargs}, max_bytes=self.max_args_bytes)
        if (step_id is None) == (parent_id is None):
            raise ValueError("give exactly one of step_id= or parent_id=")
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ValueError(f"retries must be a non-negative int, not {retries!r}")
        link: str = step_id if step_id is not None else parent_id  # type: ignore[assignment]
        spawn = Spawn(new_id("c"), name, fn, args, kwargs, retries, step_id, parent_id)
        batch = self._spawner.batch(link)
        if batch is None:
            created = self._change(link, lambda s, jobs: self._create(s, [spawn]), children=(link,))
            self._spawner.begin(link, self._known_after(link, created))
            return created[0], []  # queued for the workers by the commit
        linked = batch.known[link]
        if self.cancelled(linked):  # as the store says it (the commit would refuse it later)
            self._spawner.settle(raise_error=False)  # what is queued is committed or dropped: this says it
            raise Conflict(f"step {linked.step.name!r} of job {linked.manager.id} is cancelled; "
                           "it takes no new children")
        self._spawner.add(batch, spawn)
        child = Job(CHILD, "", time.time())
        child.id = child.name = spawn.child_id  # all a spawner needs of it: its id
        return child, []

    @staticmethod
    def _create(engine: Engine, spawns: list[Spawn]) -> list[Job]:
        created = []
        for spawn in spawns:
            child = engine.add_child(spawn.fn, spawn.args, spawn.kwargs, spawn.retries, step_id=spawn.step_id,
                                      parent_id=spawn.parent_id, child_id=spawn.child_id)
            child.fn = spawn.name  # stored by name: found once, in add_child
            created.append(child)
        return created

    @staticmethod
    def _known_after(link: str, created: list[Job]) -> dict[str, Job]:
        """The jobs a spawn on `link` needs (its manager, steps and the link), as just committed."""
        manager = created[0].manager
        for child in created:
            manager.children.remove(child)
        return _graph(manager)

    def _commit_spawns(self, batch: SpawnBatch, spawns: list[Spawn]) -> None:
        """Commit a batch of queued spawns (the spawner's thread)."""
        created = self._change(batch.link, lambda s, jobs: self._create(s, spawns), children=(batch.link,),
                               known=batch.known)
        batch.known = self._known_after(batch.link, created)

    def begin_child(self, child: Job) -> bool:
        """With a shared queue, a child begins when a worker takes it (`take_work`): one change."""
        return child.status == RUNNING

    def end_child(self, child: Job, error: str | None, traceback: str | None = None,
                  attempt: int | None = None) -> list[Job]:
        self._end(child, self.settle_spawns(error), traceback, attempt)
        return []  # a retry or the next step is queued for the workers by the commit itself

    def _end(self, child: Job, error: str | None, traceback: str | None, attempt: int | None,
             finished_at: float | None = None) -> None:
        self._change(child.id, lambda s, jobs: s.end_child(jobs[child.id], error, traceback, attempt, finished_at),
                     known=_hold(child.manager, [child]),
                     ack=self.work.entry_of(child.id))

    def handler_returned(self, step: Job, error: str | None, traceback: str | None = None) -> list[Job]:
        error = self.settle_spawns(error)
        self._change(step.id, lambda s, jobs: s.handler_returned(jobs[step.id], error, traceback),
                     ack=self.work.entry_of(step.id))
        return []  # the next step's handler is queued by the commit

    def log(self, job_id: str, level: str, message: str) -> Record | None:
        model.level_rank(level)
        message = bounded(safe_str(message), MAX_LOG_CHARS)
        self._spawner.wait()  # after the spawns before it
        return self._change(job_id, lambda s, jobs: s.log(job_id, level, message))

    def cancel(self, job_id: str) -> Job:
        """The manager is cancelled in one change (guarded on it and its steps alone, so running
        work cannot starve it); from then on no child of it begins (a worker that takes one
        cancels it instead), and its pending children are cancelled in parts."""
        seq, jobs, manager = self._job(job_id)
        require_manager(manager, "cancel")
        if model.is_terminal(manager.status):
            raise Conflict(f"job {job_id} is already {manager.status}")
        # Its step's counts move all along while children begin and end: guarded on them, this
        # change would be refused again and again. It need not be: the step is finished here only
        # if it has no pending or running child as freshly read, and those counts only fall once
        # its handler has returned; a step that is done by the time of the commit is finished by
        # the read-back after it (`_after_commit`).
        cancelled = self._change(job_id, lambda s, jobs: s.cancel(job_id), counter_guard=False)
        self._cancelled.pop(job_id, None)
        # Newest first: workers take the oldest pending children (and cancel them) meanwhile, so
        # the two rarely meet over a part (which would make its change compute again).
        ids = self._retrying(lambda: self.redis.lrange(f"{self.prefix}kids:{job_id}", 0, -1))[::-1]
        for start in range(0, len(ids), CANCEL_PART):
            part = [i.decode() for i in ids[start:start + CANCEL_PART]]
            pipe = self.redis.pipeline(transaction=False)
            for child_id in part:
                pipe.hget(f"{self.prefix}j:{child_id}", "status")
            pending = [c for c, status in zip(part, self._retrying(pipe.execute), strict=True)
                       if status == b'"pending"']
            if pending:
                self._change(job_id, lambda s, jobs: s.cancel_pending(job_id), children=pending)
        return cancelled

    def cancel_for_shutdown(self) -> list[str]:
        """Nothing: the jobs are the deployment's, run on by the other processes."""
        return []

    def abandon(self, manager_id: str, reason: str) -> None:
        """Nothing to do: with Redis, work of a process that stops is taken over by the others."""

    def delete(self, job_id: str) -> None:
        seq, jobs, job = self._job(job_id)
        self._change(job_id, lambda s, jobs: s.delete(job_id))
        self._drop(job_id, [s.id for s in job.manager.steps])

    def lose_attempt(self, child: Job, attempt: int, reason: str) -> None:
        self._change(child.id, lambda s, jobs: s.lose_attempt(jobs[child.id], attempt, reason), children=[child.id])

    def cancelled(self, job: Job) -> bool:
        """Whether the job's manager was cancelled, as read from Redis at most 0.2 s ago."""
        manager_id = job.manager.id
        now = time.monotonic()
        known = self._cancelled.get(manager_id)
        if known is None or now - known[0] > 0.2:
            raw = self._retrying(lambda: self.redis.hget(f"{self.prefix}j:{manager_id}", "cancelled"))
            known = self._cancelled[manager_id] = (now, raw == b"true")
            if len(self._cancelled) > 10_000:
                self._cancelled.clear()
        return known[1]

    # ------------------------------------------------------------------ work

    def take_work(self, count: int, block: float) -> list[tuple[Entry, Job]]:
        """Up to `count` runnable (entry, job) pairs for this process; entries of vanished workers
        are settled on the way (a lost child attempt runs again; a lost handler fails its step)."""
        taken: list[tuple[Entry, dict[str, Job] | None]] = [
            (entry, None) for entry in self._retrying(self.work.reclaim_due, count)]
        if len(taken) < count:
            taken += self._take_loaded(count - len(taken))
        if not taken:
            taken = [(entry, None) for entry in self._retrying(lambda: self.work.take(count, block))]
        runnable = []
        for entry, jobs in taken:
            job = self._begin_taken(entry, jobs)
            if job is not None:
                runnable.append((entry, job))
        return runnable

    def _take_loaded(self, count: int, held: Job | None = None) -> list[tuple[Entry, dict[str, Job]]]:
        """Up to `count` new entries, each read with its job (one script, no waiting). A child of
        the manager `held` is linked to it and its steps as they are here (older than Redis's,
        perhaps: the guards of a change made from them say so)."""
        self._retrying(self.work.ensure_group)
        try:
            reply = self._retrying(self._take, args=[self.prefix, GROUP, self.work.consumer, count,
                                                     held.id if held is not None else ""])
        except redis.ResponseError as exc:
            self.work.lost_group(exc)
            return []
        out = []
        for one in reply:
            for entry in self.work.keep(one[0], codec.pairs(one[1]), redelivered=False):
                if held is not None and len(one) == 3:
                    child = self._child_from(codec.pairs(one[2]), held)
                    held.children.append(child)
                    out.append((entry, {**_graph(held), child.id: child}))
                else:
                    out.append((entry, self._graph_from(one[2:])))
        return out

    def _begin_taken(self, entry: Entry, jobs: dict[str, Job] | None) -> Job | None:
        """The job to run for a taken entry, begun; None (the entry done) if there is none."""
        try:
            job = self._runnable(entry, jobs)
        except NotFound:
            job = None
        if job is None:
            self.done_work(entry)
        return job

    def _runnable(self, entry: Entry, jobs: dict[str, Job] | None = None) -> Job | None:
        """The job to run for `entry`, begun (a child is running from here on); None if there is
        nothing to run: the entry is stale, or its worker vanished (then its work is settled).
        `jobs`: the entry's job as read with it, if it was."""
        known = jobs if jobs is not None and entry.job_id in jobs else None
        if entry.kind == "child":
            def begin(engine: Engine, jobs: dict[str, Job]) -> tuple[Job, bool]:
                child = jobs[entry.job_id]
                return child, self._begin_entry(engine, child, entry)

            child, began = self._change(entry.job_id, begin, children=[entry.job_id], known=known)
            return child if began else self._not_begun(child)
        job = known[entry.job_id] if known is not None else self._job(entry.job_id)[2]
        if job.kind == STEP:
            if job.status == RUNNING and not job.handler_returned:
                if not entry.redelivered:
                    return job
                self.handler_returned(job, LOST_HANDLER)
            elif job.status == RUNNING:
                self._finish_step(job.id)
        return None

    @staticmethod
    def _begin_entry(engine: Engine, child: Job, entry: Entry) -> bool:
        """Begin the child attempt `entry` names, if it is still to run (a lost one is settled)."""
        if child.kind != CHILD or child.attempt != entry.attempt:
            return False  # superseded by a later attempt's entry
        if child.status == PENDING and child.manager.cancelled:
            engine.cancel_pending(child.manager.id)  # its cancel has not reached it yet
            return False
        if child.status == PENDING:
            return engine.begin_child(child)
        if child.status == RUNNING and entry.redelivered:
            engine.lose_attempt(child, entry.attempt, LOST_CHILD)
        return False

    def _not_begun(self, child: Job) -> None:
        if model.is_terminal(child.status) and child.step.status == RUNNING:
            self._finish_step(child.step.id)  # its ending change may not have (its worker vanished)

    def settle_spawns(self, error: str | None) -> str | None:
        """Wait for the spawns of the code that just returned on this thread (see `spawns`): its
        error, or that its spawns failed if it had none."""
        failed = self._spawner.settle(raise_error=False)
        if failed is None or error is not None:
            return error
        return f"spawning children failed: {type(failed).__name__}: {safe_str(failed)}"

    def end_and_take(self, ended: list[tuple], want: int,
                     batchable: Callable[[Job], bool] | None = None) -> list[tuple[Entry, Job]]:
        """End children's attempts ((child, attempt, error, traceback, finished_at), their spawns
        settled already) and take up to `want` new entries for this thread, begun. The ends and
        the starts of children of the same job are one change (the others: one each). Of the
        entries taken, the first is run here, the others only if `batchable(child)` says they
        may wait behind it (quick ones, say); the rest is queued again for any worker."""
        ended = [Ended(*e) for e in ended]
        manager = ended[-1].child.manager
        mine = [e for e in ended if e.child.manager.id == manager.id]
        for other in ended:
            if other.child.manager.id != manager.id:
                self._end(other.child, other.error, other.traceback, other.attempt, other.finished_at)
        _hold(manager, [e.child for e in mine])
        taken = self._take_loaded(want, held=manager) if want > 0 else []
        if len(taken) > 1:
            waiting = [(entry, jobs) for entry, jobs in taken[1:] if entry.kind != "child"
                       or entry.job_id not in jobs or batchable is None or not batchable(jobs[entry.job_id])]
            if waiting:
                self._retrying(self.work.give_back, [entry for entry, _ in waiting])
                taken = [t for t in taken if t not in waiting]
        joining = [(entry, jobs[entry.job_id]) for entry, jobs in taken
                   if entry.kind == "child" and jobs.get(entry.job_id) is not None
                   and jobs[entry.job_id].manager is manager and jobs[entry.job_id].kind == CHILD
                   and all(e.child.id != entry.job_id for e in mine)]
        joined = {entry.id for entry, _ in joining}
        out: list[tuple[Entry, Job]] = []
        try:
            known = _hold(manager, [e.child for e in mine] + [job for _, job in joining])
            acks = [entry for entry in (self.work.entry_of(e.child.id) for e in mine) if entry is not None]

            def apply(engine: Engine, jobs: dict[str, Job]) -> list[tuple[Entry, Job, bool]]:
                for e in mine:
                    engine.end_child(jobs[e.child.id], e.error, e.traceback, e.attempt, e.finished_at)
                return [(entry, jobs[entry.job_id], self._begin_entry(engine, jobs[entry.job_id], entry))
                        for entry, _ in joining]

            begun = self._change(mine[-1].child.id, apply, children=[*(e.child.id for e in mine[:-1]),
                                 *(entry.job_id for entry, _ in joining)], known=known, ack=acks)
        except BaseException:
            for entry, _ in taken:
                self.work.drop(entry)  # not run here: redelivered after the visibility timeout
            raise
        for entry, job, began in begun:
            if began:
                out.append((entry, job))
            else:
                self._not_begun(job)
                self.done_work(entry)
        for entry, jobs in taken:
            if entry.id not in joined:
                job = self._begin_taken(entry, jobs)
                if job is not None:
                    out.append((entry, job))
        return out

    def done_work(self, entry: Entry) -> None:
        self._retrying(lambda: self.work.ack(entry))

    def release_work(self, reason: str) -> None:
        """This process stops: what it runs is settled now as lost (a child runs again elsewhere),
        instead of after the visibility timeout."""
        for entry in list(self.work.inflight.values()):
            try:
                seq, jobs, job = self._job(entry.job_id)
                if job.kind == STEP and job.status == RUNNING and not job.handler_returned:
                    self.handler_returned(job, f"{LOST_HANDLER} ({reason})")
                elif job.kind == CHILD and job.status == RUNNING and job.attempt == entry.attempt:
                    self.lose_attempt(job, entry.attempt, reason)
                self.done_work(entry)
            except Exception:  # Redis gone: the entry is redelivered after the visibility timeout
                logger.warning("stepstream: could not hand back %s %s", entry.kind, entry.job_id, exc_info=True)

    # ------------------------------------------------------------------ retention

    def _prune(self) -> None:
        """Let go of the oldest finished managers beyond the retention (no event: as if never kept),
        and of any whose data a stopped process left half deleted."""
        keep = -1 if self.retain_jobs is None else self.retain_jobs
        before = -1 if self.retain_days is None else time.time() - self.retain_days * 86400
        dropping = self._retrying(self._prune_script, args=[self.prefix, keep, before])
        for raw_id, steps in zip(dropping[::2], dropping[1::2], strict=True):
            manager_id = raw_id.decode()
            self._retrying(self.redis.delete, f"{self.prefix}j:{manager_id}")
            self._retrying(self._drop, manager_id, json.loads(steps))
            self._retrying(self.redis.hdel, self.prefix + "dropping", manager_id)

    def _drop(self, manager_id: str, step_ids: list[str]) -> None:
        """Delete what a removed manager leaves: its steps, children, child list and logs."""
        key = self.prefix
        kids = self.redis.lrange(f"{key}kids:{manager_id}", 0, -1)
        for start in range(0, len(kids), 1000):
            self.redis.delete(*(f"{key}j:{k.decode()}" for k in kids[start:start + 1000]))
        self.redis.delete(f"{key}kids:{manager_id}", f"{key}logs:{manager_id}",
                          *(f"{key}j:{s}" for s in step_ids), *(f"{key}logs:{s}" for s in step_ids))

    # ------------------------------------------------------------------ events

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener()` (from the tail thread) whenever new events were read."""
        self._listeners = [*self._listeners, listener]
        self._tail.start(wait=False)  # called on an event loop: the tail wakes listeners once it follows

        def unsubscribe() -> None:
            self._listeners = [cb for cb in self._listeners if cb is not listener]

        return unsubscribe

    def _call_listeners(self) -> None:
        for listener in self._listeners:
            try:
                listener()
            except Exception:
                logger.exception("stepstream: a store listener raised; the others were still called")

    @property
    def seq(self) -> int:
        return max(self._committed, self._tail.visible)

    @property
    def visible_seq(self) -> int:
        """The last seq this process has read from the event stream."""
        return self._tail.visible

    def wait_visible(self, seq: int, timeout: float | None = 30) -> bool:
        return True  # committed to Redis is as durable as Redis is configured to be

    def held_events(self, after: int, limit: int = 10_000) -> tuple[list[Event], int] | None:
        """Events after `after` from this process's tail (never blocks); None when they must be
        read from Redis."""
        last = self._tail.visible
        held = self._tail.held(after, limit)
        return None if held is None else (held, last)

    def events_after(self, after: int, limit: int = 10_000) -> tuple[list[Event], int]:
        self._tail.start()  # the events come from it (a hub has started it already)
        held = self.held_events(after, limit)
        if held is not None:
            return held
        last = self._tail.visible
        if after > last:
            if after <= int(self._retrying(lambda: self.redis.get(self.prefix + "seq")) or 0):
                return [], last  # committed, not read here yet: it comes with the tail
            raise Gone(after)
        entries = self._retrying(lambda: self.redis.xrange(self.prefix + "events", min=f"{after + 1}-0",
                                                          max=f"{last}-0", count=min(limit, last - after)))
        events = [codec.event_from(i, e) for i, e in entries]
        if not events or events[0].seq != after + 1:
            raise Gone(after)
        return events, last

    def stream_snapshot(self, manager_id: str | None, recent: int = 20) -> tuple[dict, bool]:
        now = iso(time.time())
        if manager_id is not None:
            seq, jobs, manager = self._job(manager_id)
            require_manager(manager)
            return {"seq": seq, "time": now, "jobs": [wire.manager_json(codec.with_params(manager))]}, manager.settled
        seq, managers = self._managers_read(recent, [])
        managers.sort(key=lambda m: m.ordinal, reverse=True)
        return {"seq": seq, "time": now, "jobs": [wire.manager_json(m, params=False) for m in managers]}, False

    def _managers_read(self, recent: int, ids: list[str]) -> tuple[int, list[Job]]:
        self._spawner.wait()
        reply = self._retrying(lambda: self._load_managers(args=[self.prefix, recent, *ids]))
        return int(reply[0]), [self._manager_from(one[0], one[1:]) for one in reply[1:]]

    def ended_by(self, manager_id: str, seq: int) -> bool:
        raw = self._retrying(lambda: self.redis.hmget(f"{self.prefix}j:{manager_id}", "kind", "end_seq"))
        if raw[0] is None:
            return True
        end = json.loads(raw[1]) if raw[1] is not None else None
        return raw[0] == b'"manager"' and end is not None and end <= seq

    # ------------------------------------------------------------------ reads

    def get(self, job_id: str) -> Job:
        return self._job(job_id)[2]

    def snapshot(self, job_id: str) -> dict:
        seq, jobs, job = self._job(job_id)
        return {"seq": seq, "job": _job_json(job)}

    def wait(self, job_id: str, timeout: float | None) -> dict:
        """Block until the job is finished; its snapshot. A manager is read again only when one
        ends (the short `ends` stream says which); another job when the event stream says it may
        have ended (its own status), not on every change."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seq, jobs, job = self._job(job_id)
        if job.kind != MANAGER:
            return self._wait_events(job_id, deadline, timeout)
        key = self.prefix + "ends"
        while True:
            newest = self._retrying(self.redis.xrevrange, key, count=1)
            last = newest[0][0] if newest else b"0-0"
            seq, jobs, job = self._job(job_id)
            if job.settled:
                return {"seq": seq, "job": _job_json(job)}
            while True:
                left = _time_left(deadline, timeout, job)
                block = int(1000 * min(left if left is not None else 1.0, 1.0)) or 1
                reply = self._retrying(self.redis.xread, {key: last}, block=block)
                entries = [e for _, stream in (reply.items() if isinstance(reply, dict) else reply or [])
                           for e in stream]
                if entries and any(fields.get(b"m") == job_id.encode() for _, fields in entries):
                    break
                if entries:
                    last = entries[-1][0]

    def _wait_events(self, job_id: str, deadline: float | None, timeout: float | None) -> dict:
        self._tail.start()
        while True:
            seen = self._tail.visible
            seq, jobs, job = self._job(job_id)
            if model.is_terminal(job.status):
                return {"seq": seq, "job": _job_json(job)}
            while True:
                left = _time_left(deadline, timeout, job)
                with self._tail.cond:
                    if self._tail.visible == seen:
                        self._tail.cond.wait(min(left or 1.0, 1.0))
                fresh = self._tail.held(seen, 1_000_000)
                if fresh is None or any(_ends(event, job) for event in fresh):
                    break
                seen += len(fresh)

    def definition_and_params(self, job_id: str) -> tuple[str, dict]:
        seq, jobs, job = self._job(job_id)
        require_manager(job)
        return job.definition, codec.with_params(job).params

    def running_managers(self) -> list[str]:
        return [m.decode() for m in self._retrying(lambda: self.redis.zrange(self.prefix + "running", 0, -1))]

    def stats(self) -> dict:
        def read() -> tuple:
            pipe = self.redis.pipeline(transaction=True)
            pipe.get(self.prefix + "seq").hgetall(self.prefix + "statuses").hgetall(self.prefix + "counters")
            pipe.zrange(self.prefix + "running", 0, -1)
            return pipe.execute()

        self._spawner.wait()
        seq, finished, counters, running = self._retrying(read)
        managers = collections.Counter({k.decode(): int(v) for k, v in finished.items() if int(v)})
        if running:
            pipe = self.redis.pipeline(transaction=False)
            for manager_id in running:
                pipe.hget(f"{self.prefix}j:{manager_id.decode()}", "status")
            managers.update(json.loads(s) for s in self._retrying(pipe.execute) if s is not None)
        return {"seq": int(seq or 0), "managers": dict(managers),
                "counters": {k.decode(): int(v) for k, v in counters.items()}}

    def list_managers(self, status: str | None = None, limit: int = 50, cursor: int | None = None, *,
                      definition: str | None = None, q: str | None = None) -> dict:
        top = f"({cursor}" if cursor is not None else "+inf"
        page: list[str] = []
        offset, chunk = 0, max(limit + 1, 200)
        while len(page) <= limit:
            ids = self._retrying(self.redis.zrevrangebyscore, self.prefix + "managers", top, "-inf",
                                 start=offset, num=chunk)
            if not ids:
                break
            offset += len(ids)
            wanted = [i.decode() for i in ids]
            if status is not None or definition is not None or q is not None:
                pipe = self.redis.pipeline(transaction=False)
                for manager_id in wanted:
                    pipe.hmget(f"{self.prefix}j:{manager_id}", "status", "definition")
                rows = self._retrying(pipe.execute)
                wanted = [m for m, (s, d) in zip(wanted, rows, strict=True) if s is not None
                          and (status is None or json.loads(s) == status)
                          and (definition is None or json.loads(d) == definition)
                          and (q is None or queries.search_matches(q, m, json.loads(d)))]
            page += wanted
        more = len(page) > limit
        seq, managers = self._managers_read(-1, page[:limit])
        return {"seq": seq, "jobs": [wire.manager_json(m, params=False) for m in managers],
                "next": managers[-1].ordinal if more and managers else None}

    def _children_of(self, manager_id: str, start: int = 0, count: int = -1) -> list[dict]:
        key = self.prefix
        ids = self._retrying(lambda: self.redis.lrange(f"{key}kids:{manager_id}", start,
                                                       -1 if count < 0 else start + count - 1))
        pipe = self.redis.pipeline(transaction=False)
        for child_id in ids:
            pipe.hgetall(f"{key}j:{child_id.decode()}")
        return self._retrying(pipe.execute) if ids else []

    def children(self, job_id: str, step: str | None = None, status: str | None = None, limit: int = 100,
                 cursor: int = 0) -> dict:
        seq, jobs, job = self._job(job_id)
        queries.check_children_request(job_id, job.kind, job.step.name if job.step else None, step)
        step_job = job if job.kind == STEP else (self._step_named(job, step) if step else None)
        manager = job.manager
        out: list[dict] = []
        position = cursor
        while True:
            rows = self._children_of(manager.id, position, 500)
            if not rows:
                return {"children": out, "next": None}
            for raw in rows:
                if raw:
                    child = self._child_from(raw, manager)
                    if (step_job is None or child.step.id == step_job.id) and status in (None, child.status):
                        if len(out) == limit:
                            return {"children": out, "next": position}
                        out.append(wire.child_json(child))
                position += 1

    @staticmethod
    def _step_named(manager: Job, name: str) -> Job:
        return queries.step_named(manager.manager.id, manager.manager.steps, name, lambda s: s.name)

    def logs(self, job_id: str, step: str | None = None, level: str = "debug", after: int = 0, limit: int = 1000,
             before: int | None = None, q: str | None = None) -> dict:
        model.level_rank(level)
        seq, jobs, job = self._job(job_id)
        only_job = None
        if job.kind == MANAGER:
            owners = [self._step_named(job, step).id] if step is not None else [job.id] + [s.id for s in job.steps]
        else:
            queries.check_logs_request(job_id, job.kind, job.step.name, step)
            owners = [job.step.id]
            only_job = job.id if job.kind == CHILD else None
        buckets = [self._bucket(owner, level, only_job, after, before, limit + 1, q) for owner in owners]
        records, next_cursor = query(buckets, after=after, before=before, min_level=level, job_id=only_job,
                                     limit=limit, text=q)
        return {"logs": records, "next": next_cursor}

    def _bucket(self, owner: str, level: str, only_job: str | None, after: int, before: int | None,
                wanted: int, text: str | None = None) -> LogBucket:
        """The first `wanted` matching lines of one owner's log after `after` (or the last ones
        before `before`), as a bucket for `logs.query`."""
        rank = model.LEVEL_RANK[level]
        key = f"{self.prefix}logs:{owner}"
        found: list[Record] = []
        low, high = f"({after}-0" if after else "-", f"({before}-0" if before is not None else "+"
        while len(found) < wanted:
            if before is None:
                entries = self._retrying(self.redis.xrange, key, min=low, max=high, count=1000)
            else:
                entries = self._retrying(self.redis.xrevrange, key, max=high, min=low, count=1000)
            if not entries:
                break
            for entry_id, entry in entries:
                record = json.loads(entry[b"d"])
                record.pop("log_count", None)
                record.pop("manager_log_count", None)
                record["seq"] = int(entry_id.decode().partition("-")[0])
                if model.LEVEL_RANK[record["level"]] >= rank and (only_job is None or record["job_id"] == only_job) \
                        and (text is None or line_matches(text, record["message"])):
                    found.append(record)
            edge = entries[-1][0].decode()
            if before is None:
                low = f"({edge}"
            else:
                high = f"({edge}"
        if before is not None:
            found.reverse()
        bucket = LogBucket(max(len(found), 1))
        bucket.records = found
        return bucket

    def close(self) -> None:
        if not self._spawner.wait_idle(OUTAGE):
            logger.warning("stepstream: spawns still queued at close were not committed")
        self._tail.stop()
        self.work.stop()
