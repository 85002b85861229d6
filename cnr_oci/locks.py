"""Per-package locks: in-process always, and across replicas through Redis when configured."""

from __future__ import annotations

import asyncio
import weakref
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from cnr_oci import errors


class PackageLocks:
    """Serialises writes to one repository.

    Without Redis, only writes inside this process are serialised: several replicas are then
    safe from racing pushes only if the registry enforces tag immutability.
    """

    def __init__(self, redis: Any = None, ttl: float = 60.0, wait: float = 30.0) -> None:
        self._local: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._redis = redis
        self._ttl = ttl
        self._wait = wait

    @asynccontextmanager
    async def hold(self, repo: str) -> AsyncIterator[None]:
        lock = self._local.get(repo)
        if lock is None:
            lock = self._local[repo] = asyncio.Lock()
        async with lock:
            if self._redis is None:
                yield
                return
            from redis.exceptions import LockError, RedisError

            shared = self._redis.lock(f"cnr-oci:lock:{repo}", timeout=self._ttl, blocking_timeout=self._wait)
            try:
                acquired = await shared.acquire()
            except RedisError as exc:
                raise errors.UpstreamUnavailable(f"the lock store (Redis) failed: {type(exc).__name__}") from exc
            if not acquired:
                raise errors.UpstreamUnavailable(f"timed out waiting for the lock on {repo}")
            try:
                yield
            finally:
                try:
                    await shared.release()
                except (LockError, RedisError):
                    pass  # expired: the TTL bounds how long a dead holder blocks others
