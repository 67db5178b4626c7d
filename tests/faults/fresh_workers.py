"""Fresh workers' first broadcast: sagas waiting on a new worker's own queues, and
whether its first event reaches a subscriber on the channel layer."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

from django.conf import settings

from .workers import WorkerPool


def fresh_worker_first_broadcasts(count: int, *, server, work_dir: Path, orders_each: int = 4,
                                  timeout: float = 40, log=print) -> dict:
    """Start `count` fresh workers, each on task queues of its own with `orders_each` sagas
    already waiting there (so its first broadcast comes while workflows are running, as
    after a restart in production), and see whether any event of that worker reaches a
    subscriber of its orders' groups. A worker whose first publish dies never sends one.

    Returns {worker index: None if an event arrived, else what went wrong}.
    """
    import asyncio

    from channels.layers import get_channel_layer
    from orders.broadcast import order_group
    from orders.services.saga import saga_start

    from tests.factories import make_order, make_product

    product = make_product(stock=10_000)
    pools, orders = [], []
    for i in range(count):
        suffix = uuid.uuid4().hex[:6]
        pools.append(WorkerPool(size=1, work_dir=work_dir / f"fresh{i}", temporal_address=server.address,
                                orders_queue=f"fresh-orders-{suffix}", payments_queue=f"fresh-payments-{suffix}",
                                name="fresh"))
        orders.append([make_order(products=[(product, 1)], email=f"fresh{i}.{n}@faults.example", start_saga=False)
                       for n in range(orders_each)])

    results: dict = {}
    subscribed = threading.Event()
    spawned = threading.Event()

    async def listen() -> None:
        layer = get_channel_layer()
        channels = []
        for worker_orders in orders:
            channel = await layer.new_channel()
            for order in worker_orders:
                await layer.group_add(order_group(order.pk), channel)
            channels.append(channel)
        subscribed.set()
        await asyncio.get_running_loop().run_in_executor(None, spawned.wait, 60)

        async def first(i, channel):
            try:
                message = await asyncio.wait_for(layer.receive(channel), timeout)
                return i, None if message.get("type") == "saga.event" else f"unexpected message {message!r:.200}"
            except asyncio.TimeoutError:
                return i, f"no event within {timeout:.0f}s"

        results.update(await asyncio.gather(*(first(i, ch) for i, ch in enumerate(channels))))
        for worker_orders, channel in zip(orders, channels):
            for order in worker_orders:
                await layer.group_discard(order_group(order.pk), channel)

    listener = threading.Thread(target=lambda: asyncio.run(listen()), name="fresh-listener", daemon=True)
    listener.start()
    try:
        if not subscribed.wait(30):
            raise RuntimeError("could not subscribe to the channel layer within 30s")
        # The sagas wait on each worker's queues before the worker exists.
        for pool, worker_orders in zip(pools, orders):
            with override_queues(pool.env["SAGA_TASK_QUEUE"], pool.env["PAYMENTS_TASK_QUEUE"]):
                for order in worker_orders:
                    saga_start(order_id=order.pk)
        for pool in pools:
            pool._spawn(0)  # together, without waiting for the others
        spawned.set()
        listener.join(timeout + 15)
    finally:
        spawned.set()
        for pool in pools:
            pool.stop()
    for i, problem in results.items():
        if problem:
            tail = "\n".join(pools[i].log(0).splitlines()[-8:])
            results[i] = f"{problem}; worker log ends:\n{tail}"
            log(f"fresh worker {i}: {results[i]}")
    if len(results) < count:
        raise RuntimeError(f"the listener ended without results for {count - len(results)} worker(s)")
    return results


class override_queues:
    """Start sagas on given task queues (settings are read when a saga starts)."""

    def __init__(self, orders_queue: str, payments_queue: str):
        self.values = {"SAGA_TASK_QUEUE": orders_queue, "PAYMENTS_TASK_QUEUE": payments_queue}
        self.saved: dict = {}

    def __enter__(self):
        for name, value in self.values.items():
            self.saved[name] = getattr(settings, name)
            setattr(settings, name, value)

    def __exit__(self, *exc):
        for name, value in self.saved.items():
            setattr(settings, name, value)
