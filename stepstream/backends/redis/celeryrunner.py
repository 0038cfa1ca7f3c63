"""The Celery runner: the work of a Redis deployment carried and run by Celery workers.

stepstream keeps the exact state (the shared Redis backend: the commit, its guards, the `work`
stream); Celery only carries and runs the work. The work stream stays the durable record of what
is runnable, and its consumer group `workers` the record of who holds what:

- **Publishing.** A dispatcher thread (in every process whose orchestrator uses Celery and starts
  jobs, and in each Celery worker's main process) reads new work entries through the group
  (`XREADGROUP` as a `stepstream-dispatch:` consumer) and sends one Celery task
  `stepstream.run`
  per entry, carrying its entry id (and, for people reading Flower, its kind, job and attempt).
  An entry whose message was lost (its dispatcher died between the read and the send) or whose
  runner vanished sits idle in the group: every quarter of the visibility timeout a dispatcher
  takes over entries idle longer than it (`XPENDING … IDLE`, `XCLAIM … JUSTID`) and sends them
  again -- but not those of a live dispatcher (its key `work:dispatcher:NAME`, refreshed while it
  runs): their message waits in Celery's queue, however long it is.
- **Running.** The task claims its entry in one script (`CLAIM`): an entry that is gone (done) or
  held by a live runner (claimed by a worker, its idle time under the visibility timeout: a
  duplicate or late delivery) is left alone and the message acknowledged; otherwise this worker
  holds it (its heartbeat keeps it claimed while it runs) and learns whether a runner held it
  before (a redelivery). The job is then begun through the store's own fenced logic
  (`RedisStore._begin_taken`: a superseded attempt, or a child of a cancelled job, changes
  nothing but is cancelled or dropped; a redelivered running child is a lost attempt, run again
  as a new one; a redelivered step handler is not run again), run with `Attempts`, and its end
  committed together with the entry's acknowledgement.

So whatever Celery does -- deliver twice, late, after a cancel, or lose a worker -- each attempt
begins once, ends once and is counted once; retries are stepstream's (`retries=`): the task never
raises, so Celery never retries it. No chords: the steps count their fan-in themselves.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from ...attempt import Attempts
from ...jobs import Job
from ...logbridge import JobLogHandler, install_logging_bridge
from ...model import MissingDependency
from .store import RedisStore
from .workqueue import GROUP, Entry

try:
    import celery
    from celery import signals
except ModuleNotFoundError as exc:
    if exc.name not in ("celery", "kombu", "billiard", "vine"):
        raise
    raise MissingDependency("the Celery runner needs Celery: pip install 'stepstream[celery]'",
                            name="celery") from None

logger = logging.getLogger("stepstream")

TASK_NAME = "stepstream.run"
DISPATCH = "stepstream-dispatch:"  # consumer names of dispatchers: what they hold is not running
ENTRY_ID = re.compile(r"\d{1,20}-\d{1,20}")  # a stream entry id; anything else in a message is ignored
READ_BATCH = 500  # entries a dispatcher reads (and sends) at once
SWEEP_PAGE = 1000  # pending entries a sweep looks at per XPENDING
SWEEP_PAGES = 10  # ... and pages per sweep (the next sweep goes on from there)
LOST_AFTER = 10  # visibility timeouts after which a live dispatcher's entry is sent again anyway

# ARGV: work stream key, group, this consumer, entry id, visibility timeout (ms), dispatcher prefix.
# {'gone'}: the entry is done; {'busy'}: a live runner holds it; {'mine', deliveries before, fields}.
CLAIM = r"""
local key, group, me, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local pending = redis.call('XPENDING', key, group, id, id, 1)
if #pending == 0 then return {'gone'} end
local owner, idle, count = pending[1][2], tonumber(pending[1][3]), pending[1][4]
if string.sub(owner, 1, #ARGV[6]) ~= ARGV[6] and idle < tonumber(ARGV[5]) then
  return {'busy'}
end
local got = redis.call('XCLAIM', key, group, me, 0, id)  -- counts one more delivery
if #got == 0 or not got[1][2] then
  redis.call('XACK', key, group, id)
  return {'gone'}
end
return {'mine', tostring(count), got[1][2]}
"""

# Settings every worker of this app needs (see docs/celery.md): one message in hand at a time per
# pool process (a long child does not hold others back), acknowledged once it returns, and given
# back if its pool process dies. The task options are ours alone; the prefetch is worker-wide.
TASK_OPTIONS = {"acks_late": True, "reject_on_worker_lost": True, "max_retries": 0, "ignore_result": True}


# The runner of each Celery app (the last made for it). Celery's worker replaces the root
# logger's handlers as it starts (`after_setup_logger`): the bridge is attached again then, so a
# child's `logging` lines land in its step.
_RUNNERS: weakref.WeakKeyDictionary[Any, CeleryRunner] = weakref.WeakKeyDictionary()


def _bridge_in_worker(loglevel: Any) -> None:
    """Attach the log bridge again in a Celery worker whose logging Celery just set up, keeping
    the worker's own output at its `--loglevel`. The bridge lowers the root logger to INFO (a
    child's `logging.info` lands in its step); without this, Celery's handler would then write
    Celery's INFO lines too -- two a task ("received", "succeeded") from a worker started with
    `--loglevel=WARNING`: noise, and a worker whose stderr is a pipe read slowly (or not at all)
    stops once the pipe is full."""
    install_logging_bridge(logging.INFO)
    level = logging.getLevelName(loglevel.upper()) if isinstance(loglevel, str) else loglevel
    if not isinstance(level, int):
        return
    for handler in logging.getLogger().handlers:
        if not isinstance(handler, JobLogHandler) and handler.level < level:
            handler.setLevel(level)


def _is_celery_task(fn: Any) -> bool:
    return isinstance(fn, celery.Task)


def _as_child(task: Any) -> Callable[..., Any]:
    """A Celery task spawned as a child runs with its own arguments, without `ctx`."""

    def run(ctx: Any, *args: Any, **kwargs: Any) -> Any:
        return task(*args, **kwargs)

    return run


def configure(app: celery.Celery) -> None:
    """Set the worker-wide settings stepstream needs that are safe to set: one message prefetched
    per pool process. The Redis broker's `visibility_timeout` is left as it is (its default is an
    hour): a message redelivered early is only a duplicate, which changes nothing."""
    app.conf.worker_prefetch_multiplier = 1


class CeleryRunner:
    """Runs the deployment's work on the workers of `app` (a `celery.Celery`); see the module."""

    def __init__(self, attempts: Attempts, store: RedisStore, app: celery.Celery) -> None:
        self.store = store
        self.app = app
        self.attempts = Attempts(attempts.orch, self._function)
        self._outer = attempts
        self.visibility_ms = store.work.visibility_ms
        self._claim = store.redis.register_script(CLAIM)
        self.dispatcher_name = f"{DISPATCH}{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._dispatcher: threading.Thread | None = None
        self._dispatch_lock = threading.Lock()
        self._stopping = threading.Event()
        self._unsent: list[tuple[bytes, dict]] = []  # read, but the broker refused them: sent next
        self._sweep_from = "-"
        configure(app)
        first = app not in _RUNNERS
        _RUNNERS[app] = self  # the app's task runs work through the runner made last for it
        if first:
            def run(entry_id: Any, kind: Any = None, job_id: Any = None, attempt: Any = None) -> str:
                """stepstream's work entry `entry_id`, run if it still is to run (the rest: for Flower)."""
                return _RUNNERS[app].run_entry(entry_id)

            app.task(name=TASK_NAME, shared=False, **TASK_OPTIONS)(run)  # this app's alone  # this app's alone
            signals.worker_ready.connect(lambda sender=None, **_: _RUNNERS[app]._worker_ready(sender), weak=False)
            signals.worker_process_init.connect(lambda **_: _RUNNERS[app]._pool_process_started(), weak=False)
            signals.after_setup_logger.connect(lambda loglevel=None, **_: _bridge_in_worker(loglevel), weak=False)
        self.task = app.tasks[TASK_NAME]
        os.register_at_fork(after_in_child=self._forked)

    # ------------------------------------------------------------------ Runner

    def workers(self) -> None:
        """Unknown: the workers are Celery's (their pool sizes and load are the broker's to tell)."""
        return None

    def submit(self, jobs: list[Job]) -> None:
        """Nothing to run here: the commit queued the work in Redis. This process sends it to
        Celery from now on (its dispatcher starts on first use)."""
        self.start_dispatcher()

    def shutdown(self, wait: bool, abandon: Callable[[], None]) -> None:
        """Stop sending work; what runs here is handed back (a child runs again as a new attempt)."""
        self._stopping.set()
        if self._dispatcher is not None:
            self._dispatcher.join(5)
        if not wait:
            self.store.release_work("its worker process stopped")

    # ------------------------------------------------------------------ Celery hooks

    def _worker_ready(self, sender: Any) -> None:
        """A Celery worker of this app started: it sends work too. A prefork worker sends it from
        its pool processes (`_pool_process_started`): its main process forks new ones when one
        dies, and a fork must not copy a thread busy with Redis."""
        if getattr(sender, "app", self.app) is not self.app:
            return
        if "prefork" not in type(getattr(sender, "pool", None)).__module__:
            self.start_dispatcher()

    def _pool_process_started(self) -> None:
        self.start_dispatcher()

    def _forked(self) -> None:
        """A forked process (a Celery pool process) is a runner of its own: its own consumer name
        (the claim tells runners apart by it), its own heartbeat, nothing in hand; the threads of
        the process it was forked from are not here."""
        work = self.store.work
        work.consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        work.inflight.clear()
        work._by_job.clear()
        work._heartbeat = None
        work._group_ready = False
        work._lock = threading.Lock()
        self.dispatcher_name = f"{DISPATCH}{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._dispatcher = None
        self._dispatch_lock = threading.Lock()
        self._unsent = []
        self._sweep_from = "-"

    # ------------------------------------------------------------------ running an entry

    def _function(self, job: Job) -> Callable[..., Any]:
        fn = self._outer.function(job)
        return _as_child(fn) if _is_celery_task(fn) else fn

    def run_entry(self, entry_id: Any) -> str:
        """Run work entry `entry_id` if it is still to run here; what happened, in a word. Never
        raises: the message is acknowledged whatever happens (stepstream's lease re-runs what
        is lost)."""
        if not isinstance(entry_id, str) or not ENTRY_ID.fullmatch(entry_id):
            logger.warning("stepstream: ignored a Celery message naming no work entry: %r", entry_id)
            return "invalid"
        try:
            entry = self._take(entry_id)
            if entry is None:
                return "skipped"
            job = self.store._begin_taken(entry, None)
            if job is None:
                return "stale"
        except Exception:  # noqa: BLE001 - Redis gone for long: the entry's lease runs out, it is sent again
            logger.exception("stepstream: could not begin work entry %s", entry_id)
            return "error"
        try:
            fn = self.attempts.function(job)
            if inspect.iscoroutinefunction(fn):
                outcome = asyncio.run(self.attempts.call_async(job, fn))
            else:
                outcome = self.attempts.call(job, fn)
            if outcome is not None:
                self.attempts.end(job, *outcome)
            if entry.id in self.store.work.inflight:  # not acknowledged with its change
                self.store.done_work(entry)
        except Exception:  # noqa: BLE001 - its end not committed: let its lease run out (run again)
            logger.exception("stepstream: could not end %s %s", job.kind, job.id)
            self.store.work.drop(entry)
            return "error"
        return "ran"

    def _take(self, entry_id: str) -> Entry | None:
        """Claim the entry for this process, or None if it is done or a live runner holds it."""
        store = self.store
        store._retrying(store.work.ensure_group)
        reply = store._retrying(self._claim, args=[store.work.key, GROUP, store.work.consumer, entry_id,
                                                   self.visibility_ms, DISPATCH])
        if reply[0] != b"mine":
            return None
        fields = dict(zip(reply[2][::2], reply[2][1::2], strict=False))
        redelivered = int(reply[1]) > 1  # a runner held it before: its attempt is lost
        taken = store.work.keep(entry_id.encode(), fields, redelivered)
        return taken[0] if taken else None

    # ------------------------------------------------------------------ dispatching

    def start_dispatcher(self) -> None:
        """Send the deployment's work to Celery from this process (idempotent)."""
        with self._dispatch_lock:
            if self._dispatcher is None or not self._dispatcher.is_alive():
                self._stopping.clear()
                self._dispatcher = threading.Thread(target=self._dispatch, name="stepstream-celery-dispatch",
                                                    daemon=True)
                self._dispatcher.start()

    def _alive_key(self, dispatcher: str) -> str:
        return f"{self.store.work.key}:dispatcher:{dispatcher}"

    def _dispatch(self) -> None:
        next_sweep = 0.0
        while not self._stopping.is_set():
            try:
                self.store.work.ensure_group()
                # What this dispatcher holds was sent: alive, it is not sent again (see _sweep).
                self.store.redis.set(self._alive_key(self.dispatcher_name), b"1", px=self.visibility_ms)
                while self._unsent:
                    self._send(*self._unsent[0])
                    self._unsent.pop(0)
                now = time.monotonic()
                if now >= next_sweep:
                    next_sweep = now + self.visibility_ms / 4000
                    self._sweep()
                self._send_new()
            except Exception:  # noqa: BLE001 - Redis or the broker gone: say it, try again
                logger.exception("stepstream: sending work to Celery failed; trying again in 1 s")
                self._stopping.wait(1.0)

    def _send_new(self) -> None:
        """Read new entries (waiting up to 0.5 s for some) and send one task each."""
        client, key = self.store.redis, self.store.work.key
        try:
            reply = client.xreadgroup(GROUP, self.dispatcher_name, {key: ">"}, count=READ_BATCH, block=500)
        except Exception as exc:
            if "NOGROUP" in str(exc):
                self.store.work.lost_group(exc)  # type: ignore[arg-type]
                return
            raise
        for _, entries in reply or []:
            self._send_all(entries)

    def _send_all(self, entries: list[tuple[bytes, dict]]) -> None:
        """Send each entry; those not sent when the broker fails are kept to be sent first."""
        for n, (entry_id, fields) in enumerate(entries):
            try:
                self._send(entry_id, fields)
            except Exception:
                self._unsent.extend(entries[n:])
                raise

    def _sweep(self) -> None:
        """Send again the entries idle longer than the visibility timeout whose message may be
        lost: held by a runner (it vanished: the task finds its attempt lost and runs it again),
        or by a dispatcher that is gone (it may have died between read and send). An entry held
        by a live dispatcher was sent and waits in Celery's queue: sending it again would only
        make a duplicate per timeout it waits (a long queue would grow with the square of its
        length), so it is sent again only after `LOST_AFTER` timeouts (a message the broker lost)."""
        client, key = self.store.redis, self.store.work.key
        lost: list[bytes] = []
        alive: dict[str, bool] = {}
        for _ in range(SWEEP_PAGES):
            pending = client.xpending_range(key, GROUP, self._sweep_from, "+", SWEEP_PAGE, idle=self.visibility_ms)
            for p in pending:
                owner = p["consumer"].decode(errors="replace")
                if owner.startswith(DISPATCH) and p["time_since_delivered"] < LOST_AFTER * self.visibility_ms:
                    if owner not in alive:
                        alive[owner] = owner == self.dispatcher_name or bool(client.exists(self._alive_key(owner)))
                    if alive[owner]:
                        continue
                lost.append(p["message_id"])
            if len(pending) < SWEEP_PAGE:
                self._sweep_from = "-"
                break
            self._sweep_from = "(" + pending[-1]["message_id"].decode()
            if len(lost) >= SWEEP_PAGE:
                break
        if not lost:
            return
        # JUSTID: the delivery count stays (a runner's claim counts, not ours); min idle: a
        # runner that claimed one meanwhile keeps it.
        ids = client.xclaim(key, GROUP, self.dispatcher_name, self.visibility_ms, lost, justid=True)
        pipe = client.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xrange(key, entry_id, entry_id)
        found = []
        for entry_id, entries in zip(ids, pipe.execute(), strict=True):
            if entries:
                found.append((entry_id, entries[0][1]))
            else:  # deleted meanwhile: done
                client.xack(key, GROUP, entry_id)
        self._send_all(found)

    def _send(self, entry_id: bytes, fields: dict) -> None:
        def text(name: bytes) -> str | None:
            value = fields.get(name)
            return value.decode(errors="replace")[:100] if isinstance(value, bytes) else None

        self.task.apply_async((entry_id.decode(), text(b"k"), text(b"j"), text(b"a")))


