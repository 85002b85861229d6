"""Cache invalidation across replicas: own writes' forgets published on Redis, others' applied here.

Every ``ReadModel.forget`` that a write here causes is published on a Redis pub/sub channel with this
process's replica id; a message from another replica drops the same caches here (and runs the
``on_forget`` hooks: catalog, helm index) without being published again; our own messages are
ignored. Redis failures never fail a read or a write: they are logged, the subscriber resubscribes,
and until then (or for a message lost meanwhile) the caches fall back to ``--cache-ttl``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

from cnr_oci.readmodel import ReadModel

log = logging.getLogger(__name__)

CHANNEL = "cnr-oci:forget"
QUEUE = 10_000  # forgets waiting to be published; past it they are dropped (the TTL still holds)
# A message names one repository (<= 255 characters) and tag (<= 128): a longer one is not ours, and
# is dropped unparsed (its repository would be kept as a key in the caches' write counters).
MAX_MESSAGE = 4096


class Invalidation:
    """Publishes this replica's forgets and applies the other replicas' ones."""

    def __init__(self, redis: Any, read: ReadModel, *, channel: str = CHANNEL, retry: float = 1.0,
                 timeout: float = 5.0) -> None:
        self.replica = uuid.uuid4().hex
        self.channel = channel
        self.subscribed = asyncio.Event()
        self._redis = redis
        self._read = read
        self._retry = retry
        self._timeout = timeout
        self._applying = False
        self._outbox: asyncio.Queue[tuple[str, str | None]] = asyncio.Queue(QUEUE)
        self._tasks: list[asyncio.Task[None]] = []
        self._warned = 0.0
        read.on_forget.append(self._forgotten)

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._publish_forever()), asyncio.create_task(self._listen_forever())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._read.on_forget.remove(self._forgotten)

    def _forgotten(self, repo: str, tag: str | None) -> None:
        """The on_forget hook: a forget caused here is queued for publishing."""
        if self._applying:
            return
        try:
            self._outbox.put_nowait((repo, tag))
        except asyncio.QueueFull:
            self._warn("the invalidation queue is full (Redis too slow or down)")

    def apply(self, data: bytes | str) -> bool:
        """Drop what another replica's message names; False for our own, or a malformed one."""
        try:
            if len(data) > MAX_MESSAGE:
                raise ValueError("too long")
            msg = json.loads(data)
            sender, repo, tag = msg["from"], msg["repo"], msg["tag"]
            if not isinstance(repo, str) or not (tag is None or isinstance(tag, str)):
                raise ValueError("repo and tag must be strings")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:  # RecursionError: deep nesting
            log.warning("ignored a malformed message on %s: %s", self.channel, type(exc).__name__)
            return False
        if sender == self.replica:
            return False
        self._applying = True
        try:
            self._read.forget(repo, tag)
        finally:
            self._applying = False
        return True

    async def _publish_forever(self) -> None:
        from redis.exceptions import RedisError

        while True:
            repo, tag = await self._outbox.get()
            msg = json.dumps({"from": self.replica, "repo": repo, "tag": tag})
            try:
                await asyncio.wait_for(self._redis.publish(self.channel, msg), self._timeout)
            except (RedisError, OSError, TimeoutError) as exc:
                self._warn(f"publishing an invalidation failed ({type(exc).__name__})")

    async def _listen_forever(self) -> None:
        from redis.exceptions import RedisError

        failed = False
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await asyncio.wait_for(pubsub.subscribe(self.channel), self._timeout)
                if failed:
                    log.warning("subscribed again to %s: other replicas' writes drop caches here again",
                                self.channel)
                failed = False
                self.subscribed.set()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self.apply(message["data"])
            except (RedisError, OSError, TimeoutError) as exc:
                self.subscribed.clear()
                if not failed:
                    log.warning("the invalidation channel (Redis) failed (%s): other replicas' writes show "
                                "here after --cache-ttl until it is back; retrying", type(exc).__name__)
                failed = True
            finally:
                self.subscribed.clear()
                await asyncio.shield(_quietly_close(pubsub))
            await asyncio.sleep(self._retry)

    def _warn(self, what: str) -> None:
        """At most one warning every 10 s: a Redis outage under load must not flood the log."""
        now = time.monotonic()
        if now - self._warned >= 10.0:
            self._warned = now
            log.warning("%s: other replicas see this write after --cache-ttl", what)


async def _quietly_close(pubsub: Any) -> None:
    try:
        await pubsub.aclose()
    except Exception as exc:  # a broken connection may fail to close; nothing more to do
        log.debug("closing the pub/sub connection: %s", type(exc).__name__)
