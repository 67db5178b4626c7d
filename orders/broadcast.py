"""Publishing read-model changes to the channel layer, after the transaction commits.

Messages go to one group per order and one for the ops dashboard. A failed publish is
logged and dropped: pages reload their timeline from the database on every (re)connect,
so nothing is lost from view, and the saga never waits on Redis.
"""

import asyncio
import logging

from channels.layers import get_channel_layer
from django.db import transaction

from . import async_bridge
from .crashpoints import crash_point

logger = logging.getLogger(__name__)

OPS_GROUP = "ops"


def order_group(order_id: int) -> str:
    return f"order-{order_id}"


_queue: asyncio.Queue | None = None


async def _publisher(queue: asyncio.Queue) -> None:
    # One consumer keeps messages in commit order.
    layer = get_channel_layer()
    while True:
        groups, message = await queue.get()
        try:
            for group in groups:
                await layer.group_send(group, message)
        except Exception:
            logger.warning("channel layer publish failed; pages will catch up on reconnect", exc_info=True)


async def _enqueue(groups: list[str], message: dict) -> None:
    global _queue
    if _queue is None:
        crash_point("broadcast.first_publish")
        _queue = asyncio.Queue()
        asyncio.get_running_loop().create_task(_publisher(_queue))
    _queue.put_nowait((groups, message))


def publish(groups: list[str], message: dict) -> None:
    """Queue a message for the groups now (fire and forget)."""
    async_bridge.submit(lambda: _enqueue(groups, message))


def publish_on_commit(groups: list[str], message: dict) -> None:
    transaction.on_commit(lambda: publish(groups, message))
