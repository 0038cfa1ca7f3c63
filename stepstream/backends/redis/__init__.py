"""Storage in a shared Redis (or Valkey): many server and worker processes, one seq, one view.

`RedisStore` stands in for the in-process `Store`; see its module for the keys and the commit.
"""

from ...model import MissingDependency

# redis-py is an extra (the core needs only the standard library): whatever imports this backend
# -- `Orchestrator(redis=...)`, `use_redis`, `--redis` -- learns here, in one line, what to install.
try:
    import redis  # noqa: F401
except ModuleNotFoundError as exc:
    if exc.name != "redis":  # redis-py is there but broken: its own error says more
        raise
    raise MissingDependency("the Redis backend needs redis-py: pip install 'stepstream[redis]'", name="redis") from None

from .store import RedisStore, StorageUnavailable, safe_url  # noqa: E402 - after the check above

__all__ = ["RedisStore", "StorageUnavailable", "safe_url"]
