"""The bridge from standard `logging`: records logged while a job's code runs land in its log.

The orchestrator sets `current_job` to a `LogSink` for the job whose code runs (a context
variable, so threads and asyncio tasks each see their own); the handler writes through it and
knows nothing of the store.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable

LogSink = Callable[[str, str], object]  # (level, message): stores a line in one job's log

# Set while a job's code runs: where its log lines go. Read by the `logging` bridge, which so
# needs nothing of the store.
current_job: contextvars.ContextVar[LogSink | None] = contextvars.ContextVar("stepstream_current_job", default=None)



_LEVEL_NAMES = ((logging.ERROR, "error"), (logging.WARNING, "warning"), (logging.INFO, "info"))


def level_name(levelno: int) -> str:
    """Map a `logging` level number onto stepstream's four levels."""
    for threshold, name in _LEVEL_NAMES:
        if levelno >= threshold:
            return name
    return "debug"


class JobLogHandler(logging.Handler):
    """Stores records logged while a job runs in that job's log. Others go where Python would
    have sent them without this handler: when the application configured no handler of its own,
    warnings and errors to stderr (`logging.lastResort`), so a server error is never silent."""

    def emit(self, record: logging.LogRecord) -> None:
        sink = current_job.get()
        if sink is None:
            last_resort = logging.lastResort
            if last_resort is not None and record.levelno >= last_resort.level and _only_us(record):
                last_resort.handle(record)
            return
        try:
            sink(level_name(record.levelno), self.format(record))
        except Exception:  # a job evicted or finished mid-call must not break the caller
            self.handleError(record)


def _only_us(record: logging.LogRecord) -> bool:
    """True if no handler but this bridge would see `record` (Python's condition for lastResort)."""
    logger: logging.Logger | None = logging.getLogger(record.name)
    while logger is not None:
        if any(not isinstance(h, JobLogHandler) for h in logger.handlers):
            return False
        logger = logger.parent if logger.propagate else None
    return True


def install_logging_bridge(capture_level: int | None) -> None:
    """Attach the bridge to the root logger (once: again only if it was taken off).

    With `capture_level` set, the root logger's level is lowered to it if it is higher, so that
    e.g. `logging.info` inside a job is not dropped before any handler sees it.
    """
    if capture_level is None:
        return
    root = logging.getLogger()
    # Looked for rather than remembered: a framework may replace the root's handlers (a Celery
    # worker does as it starts), and then the bridge is attached again.
    if not any(isinstance(h, JobLogHandler) for h in root.handlers):
        handler = JobLogHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > capture_level:
        root.setLevel(capture_level)
