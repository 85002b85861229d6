"""Redis package locks against a real redis-server: renewed while held, failures on release logged."""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.asyncio import from_url

from cnr_oci import errors
from cnr_oci.locks import PackageLocks
from tests.helpers import unique


@pytest.fixture
async def redis_pair(redis_server):
    """Two clients on one Redis: two replicas."""
    first, second = from_url(redis_server), from_url(redis_server)
    yield first, second
    await first.aclose()
    await second.aclose()


async def test_a_lock_held_past_its_ttl_stays_exclusive(redis_pair):
    holder = PackageLocks(redis_pair[0], ttl=1.0, wait=0.2)
    other = PackageLocks(redis_pair[1], ttl=1.0, wait=0.2)
    repo = "/".join(unique())
    async with holder.hold(repo):
        for _ in range(6):  # 3 s, three times the TTL
            await asyncio.sleep(0.5)
            with pytest.raises(errors.UpstreamUnavailable, match="timed out waiting"):
                async with other.hold(repo):
                    pass
    async with other.hold(repo):  # released: the other replica gets it at once
        pass


async def test_a_failed_release_is_logged(redis_pair, caplog):
    locks = PackageLocks(redis_pair[0], ttl=5.0, wait=0.2)
    repo = "/".join(unique())
    with caplog.at_level(logging.WARNING, logger="cnr_oci.locks"):
        async with locks.hold(repo):
            await redis_pair[1].delete(f"cnr-oci:lock:{repo}")  # expired, or taken by someone else
    [record] = [r for r in caplog.records if r.name == "cnr_oci.locks"]
    assert record.levelno == logging.WARNING and "releasing the lock on" in record.getMessage()
    assert repo in record.getMessage() and "LockNotOwnedError" in record.getMessage()


async def test_a_lost_lock_is_logged_as_an_error(redis_pair, caplog):
    locks = PackageLocks(redis_pair[0], ttl=0.6, wait=0.2)
    repo = "/".join(unique())
    with caplog.at_level(logging.WARNING, logger="cnr_oci.locks"):
        async with locks.hold(repo):
            await redis_pair[1].set(f"cnr-oci:lock:{repo}", b"someone else")
            await asyncio.sleep(0.5)
    assert any(r.levelno == logging.ERROR and "lost the lock" in r.getMessage() for r in caplog.records)
