"""The broadcast path cannot die silently (issue 7, case 4).

Fresh worker processes (`manage.py run_worker`, the production entry point) each deliver
their very first saga event to a subscriber on the real Redis channel layer; a publisher
whose group_send raises keeps publishing; a full queue drops the oldest and counts it.
"""

import asyncio
import logging
import time
import uuid

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from temporalio.client import Client

from orders.broadcast import _Publisher, order_group
from orders.services.saga import saga_start

from .factories import make_order
from .temporal_server import end_open_workflows
from .worker_processes import start_worker_process, stop, worker_env

FRESH_WORKERS = 5


class FlakyLayer:
    """A channel layer whose first group_send fails the way the lazy import did."""

    def __init__(self, failures: int = 1, block: asyncio.Event | None = None):
        self.failures = failures
        self.block = block
        self.sent: list[tuple[str, dict]] = []

    async def group_send(self, group: str, message: dict) -> None:
        if self.block is not None:
            await self.block.wait()
        if self.failures:
            self.failures -= 1
            raise SystemError("Objects/dictobject.c:1899: bad argument to internal function")
        self.sent.append((group, message))


async def _until(predicate, timeout: float = 5) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def test_publisher_keeps_publishing_after_a_publish_raises():
    layer = FlakyLayer(failures=1)
    publisher = _Publisher(10, layer=layer)
    for n in range(3):
        publisher.put(["g"], {"n": n})
    await _until(lambda: len(layer.sent) == 2)
    assert [m["n"] for _, m in layer.sent] == [1, 2]
    assert (publisher.failed, publisher.published) == (1, 2)
    assert not publisher.task.done()
    publisher.put(["g"], {"n": 3})
    await _until(lambda: len(layer.sent) == 3)
    publisher.task.cancel()


async def test_publisher_is_restarted_when_its_task_ends():
    layer = FlakyLayer(failures=0)
    publisher = _Publisher(10, layer=layer)
    publisher.put(["g"], {"n": 0})
    await _until(lambda: len(layer.sent) == 1)
    publisher.task.cancel()
    await asyncio.sleep(0.01)
    publisher.put(["g"], {"n": 1})
    await _until(lambda: len(layer.sent) == 2)
    assert publisher.restarts == 1
    publisher.task.cancel()


async def test_full_queue_drops_the_oldest_counts_and_logs_once(caplog, settings):
    settings.BROADCAST_DROP_LOG_SECONDS = 60
    release = asyncio.Event()
    layer = FlakyLayer(failures=0, block=release)
    publisher = _Publisher(3, layer=layer)
    with caplog.at_level(logging.WARNING, logger="orders.broadcast"):
        for n in range(8):
            publisher.put(["g"], {"n": n})
            await asyncio.sleep(0)  # the publisher takes the first and blocks on Redis
    assert publisher.dropped == 4 and publisher.queue.qsize() == 3
    warnings = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(warnings) == 1 and "dropped 1 message(s)" in warnings[0]  # rate-limited
    release.set()
    await _until(lambda: len(layer.sent) == 4)
    assert [m["n"] for _, m in layer.sent] == [0, 5, 6, 7]  # the oldest went, the newest stayed
    publisher.task.cancel()


async def _first_message(channel: str, timeout: float) -> dict:
    return await asyncio.wait_for(get_channel_layer().receive(channel), timeout)


@pytest.mark.django_db(transaction=True)
async def test_every_fresh_worker_process_delivers_its_first_event(temporal_server, settings):
    layer = get_channel_layer()
    processes, subscriptions = [], []
    try:
        for _ in range(FRESH_WORKERS):
            suffix = uuid.uuid4().hex[:8]
            queues = (f"orders-{suffix}", f"payments-{suffix}")
            env = worker_env(temporal_address=temporal_server.address, orders_queue=queues[0],
                             payments_queue=queues[1])
            processes.append((queues, start_worker_process(["manage.py", "run_worker"], env)))
        for queues, process in processes:
            line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 120)
            while line and "polling" not in line:
                line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 120)
            assert "polling" in line, stop(process)
            order = await sync_to_async(make_order)(start_saga=False)
            channel = await layer.new_channel()
            await layer.group_add(order_group(order.pk), channel)
            subscriptions.append((order, channel))
            settings.SAGA_TASK_QUEUE, settings.PAYMENTS_TASK_QUEUE = queues
            assert await sync_to_async(saga_start)(order_id=order.pk)
        for (order, channel), (_, process) in zip(subscriptions, processes):
            try:
                message = await _first_message(channel, 60)
            except TimeoutError:
                raise AssertionError(f"no event from a fresh worker:\n{stop(process)}") from None
            assert message["type"] == "saga.event"
            assert message["order"]["order_id"] == order.pk
            assert (message["event"]["step"], message["event"]["kind"]) == ("validate", "started")
    finally:
        for _, process in processes:
            output = stop(process)
            assert "Task exception was never retrieved" not in output, output
        client = await Client.connect(temporal_server.address)
        await end_open_workflows(client)
        for order, channel in subscriptions:
            await layer.group_discard(order_group(order.pk), channel)


async def test_publisher_measures_commit_to_publish(settings):
    """The publishing side of the live pages' delay: from an event's commit (stamped on its
    message) to its message on the channel layer."""
    from prometheus_client import REGISTRY

    settings.METRICS_ENABLED = True
    name = "ordersite_broadcast_commit_to_publish_seconds"

    def observed(bucket: str) -> float:
        return REGISTRY.get_sample_value(f"{name}_bucket", {"le": bucket}) or 0.0

    before_count, before_fast = observed("+Inf"), observed("0.5")
    layer = FlakyLayer(failures=0)
    publisher = _Publisher(10, layer=layer)
    publisher.put(["g"], {"n": 0, "committed_at": time.time() - 2.0})  # committed 2 s ago
    publisher.put(["g"], {"n": 1})  # no commit stamp (not a saga event): not measured
    await _until(lambda: len(layer.sent) == 2)
    assert observed("+Inf") == before_count + 1
    assert observed("0.5") == before_fast  # measured from the commit: about 2 s, not ~0
    publisher.task.cancel()
