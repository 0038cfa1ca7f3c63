"""Storage in a shared Redis (or Valkey): many server and worker processes, one seq, one view.

`RedisStore` stands in for the in-process `Store`; see its module for the keys and the commit.
"""

from .store import RedisStore, StorageUnavailable, safe_url

__all__ = ["RedisStore", "StorageUnavailable", "safe_url"]
