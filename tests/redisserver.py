"""The tests' redis-server: `harness/redisserver.py`'s launcher, skipped where redis-server is
missing, failed instead in CI (`$CI` or `$STEPSTREAM_REQUIRE_REDIS`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness import redisserver
from harness.redisserver import free_port, redis_server_path

__all__ = ["RedisServer", "free_port", "redis_server_path", "require_redis_server"]


def require_redis_server() -> str:
    """The redis-server executable; skipped outside CI where it is missing, failed in CI."""
    path = redis_server_path()
    if path is None:
        if os.environ.get("CI") or os.environ.get("STEPSTREAM_REQUIRE_REDIS"):
            pytest.fail(redisserver.MISSING)
        pytest.skip(redisserver.MISSING)
    return path


class RedisServer(redisserver.RedisServer):
    """The harness's `RedisServer`; a missing redis-server skips the test (fails it in CI)."""

    def __init__(self, executable: str | None = None, *, directory: Path | None = None,
                 durable: bool = True) -> None:
        super().__init__(executable or require_redis_server(), directory=directory, durable=durable)
