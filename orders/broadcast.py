"""Publishing read-model changes to the channel layer, after the transaction commits.

Messages go to one group per order and one for the ops dashboard. A failed publish is
logged and dropped: pages reload their timeline from the database on every (re)connect,
so nothing is lost from view, and the saga never waits on Redis.

One publisher task on the async bridge loop sends them in commit order. It cannot die
silently: an exception in one publish is logged and the next message goes out, and if the
task ends anyway it is started again with the next message. Its queue is bounded
(BROADCAST_QUEUE_MAX): when Redis cannot keep up the oldest messages are dropped, counted
and logged (at most every BROADCAST_DROP_LOG_SECONDS).

Worker processes call publisher_start() at start: the channel layer and its Redis client
are imported and connected then, because importing them lazily inside a running worker
(while the workflow sandbox has swapped modules) has crashed the import.
"""

import asyncio
import logging
import threading
import time

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction

from . import async_bridge, metrics
from .crashpoints import crash_point

logger = logging.getLogger(__name__)

OPS_GROUP = "ops"
# Published to when a worker starts, so the layer's connection code runs then, not later.
WARM_UP_GROUP = "broadcast-warm-up"


def order_group(order_id: int) -> str:
    return f"order-{order_id}"


class _Publisher:
    """The queue and its consumer task; lives on the bridge loop (all methods but stats run there)."""

    def __init__(self, maxsize: int, layer=None):
        self.layer = layer  # the default channel layer unless given (tests)
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=maxsize)
        self.task: asyncio.Task | None = None
        self.published = 0
        self.failed = 0
        self.dropped = 0
        self.restarts = 0
        self._dropped_logged = 0
        self._drop_logged_at = 0.0

    def ensure_running(self) -> None:
        if self.task is None or self.task.done():
            if self.task is not None:
                self.restarts += 1
            self.task = asyncio.get_running_loop().create_task(self._run(), name="broadcast-publisher")
            self.task.add_done_callback(self._ended)

    def put(self, groups: list[str], message: dict) -> None:
        if self.queue.full():
            self.queue.get_nowait()  # the oldest goes: pages want the newest state
            self.queue.task_done()
            self.dropped += 1
            metrics.broadcast_dropped()
            self._log_drops()
        self.queue.put_nowait((groups, message))
        self.ensure_running()

    def _log_drops(self) -> None:
        now = time.monotonic()
        if now - self._drop_logged_at >= settings.BROADCAST_DROP_LOG_SECONDS:
            logger.warning(
                "broadcast queue full (%d): dropped %d message(s) since the last warning, %d in all; "
                "pages catch up on reconnect", self.queue.maxsize, self.dropped - self._dropped_logged, self.dropped,
            )
            self._dropped_logged, self._drop_logged_at = self.dropped, now

    async def _run(self) -> None:
        # One consumer keeps messages in commit order.
        while True:
            groups, message = await self.queue.get()
            try:
                layer = self.layer or get_channel_layer()
                for group in groups:
                    await layer.group_send(group, message)
                self.published += 1
                metrics.broadcast_published(message.get("committed_at"))
            except Exception:
                self.failed += 1
                metrics.broadcast_failed()
                logger.warning("channel layer publish failed; pages will catch up on reconnect", exc_info=True)
            finally:
                self.queue.task_done()

    def _ended(self, task: asyncio.Task) -> None:
        # Retrieve the exception (no "Task exception was never retrieved") and restart if
        # messages are waiting; otherwise the next put() restarts it.
        if task.cancelled():
            return
        if task.exception() is not None:
            logger.error("broadcast publisher died; restarting it", exc_info=task.exception())
        if not self.queue.empty():
            self.ensure_running()

    def stats(self) -> dict:
        return {"queued": self.queue.qsize(), "published": self.published, "failed": self.failed,
                "dropped": self.dropped, "restarts": self.restarts}


_publisher: _Publisher | None = None
_start_lock = threading.Lock()
_started = False


def _get_publisher() -> _Publisher:
    """The process's publisher (call on the bridge loop)."""
    global _publisher
    if _publisher is None:
        _publisher = _Publisher(settings.BROADCAST_QUEUE_MAX)
    return _publisher


_first_put = True


async def _enqueue(groups: list[str], message: dict) -> None:
    global _first_put
    if _first_put:  # the first event this process publishes (the warm-up at start is not one)
        _first_put = False
        crash_point("broadcast.first_publish")
    _get_publisher().put(groups, message)


def publish(groups: list[str], message: dict) -> None:
    """Queue a message for the groups now (fire and forget)."""
    async_bridge.submit(lambda: _enqueue(groups, message))


def publish_on_commit(groups: list[str], message: dict) -> None:
    def committed():
        # When it committed (wall clock: the frame may leave another process), for the
        # commit-to-frame delay the live sockets measure.
        message.setdefault("committed_at", time.time())
        publish(groups, message)

    transaction.on_commit(committed)


async def _warm_up() -> None:
    _get_publisher().ensure_running()
    # Connects and sends once, so every module the layer's Redis client loads lazily is loaded now.
    await get_channel_layer().group_send(WARM_UP_GROUP, {"type": "broadcast.warm_up"})


def publisher_start(timeout: float = 5) -> bool:
    """Import and connect the channel layer and start the publisher, now (a worker's start).

    Safe to call again. Returns False (logged) if Redis could not be reached: publishing
    then keeps trying with each message, but the modules are imported either way.
    """
    global _started
    with _start_lock:
        if _started:
            return True
        import channels_redis.pubsub  # noqa: F401  (the layer's own modules, before any workflow runs)
        import redis.asyncio  # noqa: F401

        get_channel_layer()
        try:
            async_bridge.run(_warm_up, timeout=timeout)
            _started = True
            return True
        except Exception:
            logger.warning("channel layer not reachable at worker start; broadcasts will retry", exc_info=True)
            return False


def publisher_stats() -> dict:
    """Counters of this process's publisher (published, failed, dropped, restarts, queued)."""
    return async_bridge.run(_stats)


async def _stats() -> dict:
    return _get_publisher().stats()
