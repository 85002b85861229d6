"""Per-package locks: in-process always, and across replicas through Redis when configured."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from cnr_oci import errors

log = logging.getLogger(__name__)


class PackageLocks:
    """Serialises writes to one repository.

    Without Redis, only writes inside this process are serialised: several replicas are then
    safe from racing pushes only if the registry enforces tag immutability.

    With Redis, the shared lock has a TTL (so a dead holder blocks others for at most ``ttl``),
    and a live holder renews it every ``ttl / 3`` for as long as it holds it.
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
            keeper = asyncio.create_task(self._keep(shared, repo))
            try:
                yield
            finally:
                keeper.cancel()
                await asyncio.gather(keeper, return_exceptions=True)
                try:
                    await shared.release()
                except (LockError, RedisError) as exc:
                    log.warning("releasing the lock on %s failed (%s); it may have expired and been "
                                "taken by another replica", repo, type(exc).__name__)

    async def _keep(self, shared: Any, repo: str) -> None:
        """Renew the lock's TTL every ttl/3 while it is held."""
        from redis.exceptions import LockNotOwnedError, RedisError

        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                await shared.reacquire()
            except LockNotOwnedError:
                log.error("lost the lock on %s (it expired or was taken); writes to it are no longer "
                          "exclusive", repo)
                return
            except RedisError as exc:
                log.warning("renewing the lock on %s failed (%s); retrying", repo, type(exc).__name__)
