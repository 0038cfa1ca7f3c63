"""The one place a backend is opened from settings: in memory, on a SQLite journal, or on Redis.

Each opening gives the backend and how to make its runner: work of the memory backend runs where
it is made (`LocalRunner`); work in Redis runs from the shared queue (`RedisWorker`). Redis (and
its worker loop, and Celery for `celery_runner`) is imported only when asked for: the core
needs only the standard library.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass

from ..attempt import Attempts
from ..backend import Backend
from ..journal import Journal
from ..model import StepstreamError
from ..runner import LocalRunner, Runner
from .memory import MemoryStore


@dataclass(frozen=True)
class Settings:
    """What every backend is opened with."""

    replay_size: int = 100_000
    max_finished: int = 1000
    max_logs_per_step: int = 20_000
    max_args_bytes: int = 64 * 1024
    visibility_timeout: float = 30.0

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Opened:
    """A backend and how to make its runner from the attempts to run and a number of workers."""

    backend: Backend
    make_runner: Callable[[Attempts, int], Runner]


def open_backend(settings: Settings, *, db: str | os.PathLike | None = None, journal: Journal | None = None,
                 redis: str | None = None) -> Opened:
    """The backend the arguments name (at most one): `db` a SQLite file, `journal` any journal,
    `redis` a Redis URL; none: memory only."""
    if redis is not None:
        return open_redis(settings, redis)
    if db is not None:
        from ..journal.sqlite import SqliteJournal

        journal = SqliteJournal(db)
    store = MemoryStore(replay_size=settings.replay_size, max_finished=settings.max_finished,
                  max_logs_per_step=settings.max_logs_per_step, journal=journal)
    return Opened(store, lambda attempts, workers: LocalRunner(attempts, max(workers, 1)))


def open_redis(settings: Settings, url: str, *, prefix: str = "stepstream:", retain_jobs: int | None = None,
               retain_days: float | None = None) -> Opened:
    """Every job in the Redis at `url`, shared by every process that uses it. Finished jobs
    beyond `retain_jobs` (default `max_finished`) or older than `retain_days` are let go."""
    from .redis import RedisStore  # redis-py is needed only here (MissingDependency names the extra)
    from .redis.worker import RedisWorker

    store = RedisStore(
        url, prefix=prefix, replay_size=settings.replay_size, max_logs_per_step=settings.max_logs_per_step,
        retain_jobs=retain_jobs if retain_jobs is not None or retain_days is not None else settings.max_finished,
        retain_days=retain_days, visibility_timeout=settings.visibility_timeout,
        max_args_bytes=settings.max_args_bytes)
    return Opened(store, lambda attempts, workers: RedisWorker(attempts, store, workers))


def celery_runner(backend: Backend, attempts: Attempts, app: object) -> Runner:
    """The runner that runs a Redis deployment's work on the Celery workers of `app`. Celery is
    imported only here (MissingDependency names the extra)."""
    from .redis.celeryrunner import CeleryRunner
    from .redis.store import RedisStore

    if not isinstance(backend, RedisStore):
        raise StepstreamError("the Celery runner needs the Redis backend, which every process reaches: "
                              "use_celery(app, redis=URL), or Orchestrator(redis=URL) first")
    return CeleryRunner(attempts, backend, app)  # type: ignore[arg-type]
