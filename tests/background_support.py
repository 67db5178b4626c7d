"""Fixtures and helpers for the background-operation tests (tests/test_background_*.py).

- `celery_worker`: a real Celery worker (threads pool) in this process, consuming a queue
  no other test session uses, on the real Redis broker. Tasks see the test database
  because they run in-process with the same settings; tests that use it need
  django_db(transaction=True) so the worker's connections see committed rows.
- `orders_only_env`: Temporal workers for the saga's orders queue only, so charges (on the
  payments queue) wait with no worker polling: a saga "whose payments worker is stopped".
"""

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from celery.contrib.testing.worker import start_worker
from django.utils import timezone
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from orders.models import Order, SagaEvent
from orders.saga.worker import build_workers
from orders.status import OrderStatus, SagaStatus


@pytest.fixture(scope="session")
def celery_worker(django_db_setup, django_db_blocker):
    from ordersite.celery import app

    # A queue of our own: a developer's `make run` worker on the same Redis never takes
    # these tasks, and these tests never take theirs.
    app.conf.task_default_queue = f"test-background-{uuid.uuid4().hex[:8]}"
    with django_db_blocker.unblock():
        with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False,
                          shutdown_timeout=60, loglevel="WARNING") as worker:
            yield worker


@dataclass
class WorkerEnv:
    client: Client
    orders_queue: str
    payments_queue: str
    executor: ThreadPoolExecutor
    runs: list = field(default_factory=list)
    workers: list = field(default_factory=list)

    def start(self, queues: tuple[str, ...]) -> None:
        """Start workers for more queues mid-test (the payments worker coming back)."""
        workers = build_workers(self.client, orders_queue=self.orders_queue, payments_queue=self.payments_queue,
                                queues=queues, executor=self.executor)
        self.workers += workers
        self.runs += [asyncio.create_task(w.run()) for w in workers]


async def _end_open_workflows(client: Client) -> None:
    workflow_ids = await sync_to_async(
        lambda: list(Order.objects.exclude(workflow_id=None).values_list("workflow_id", flat=True))
    )()
    for workflow_id in workflow_ids:
        for wid in (workflow_id, workflow_id.replace("order-", "delivery-")):
            try:
                handle = client.get_workflow_handle(wid)
                if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                    await handle.terminate("test finished")
            except RPCError:
                pass


@pytest.fixture
async def orders_only_env(transactional_db, temporal_server, settings):
    suffix = uuid.uuid4().hex[:8]
    settings.SAGA_TASK_QUEUE = f"orders-{suffix}"
    settings.PAYMENTS_TASK_QUEUE = f"payments-{suffix}"
    client = await Client.connect(temporal_server.address)
    env = WorkerEnv(client, settings.SAGA_TASK_QUEUE, settings.PAYMENTS_TASK_QUEUE,
                    ThreadPoolExecutor(max_workers=32, thread_name_prefix="test-activity"))
    env.start(("orders",))
    try:
        yield env
    finally:
        await _end_open_workflows(client)
        await asyncio.gather(*(w.shutdown() for w in env.workers), return_exceptions=True)
        await asyncio.gather(*env.runs, return_exceptions=True)
        env.executor.shutdown(wait=True)


# --- rows written directly, for states that need no saga ----------------------------------


def order_rows_create(count: int, *, saga_status: str, status: str, quiet_for: timedelta | None = None,
                      start: int = 0, prefix: str = "T") -> list[Order]:
    """Bare orders in a given state (no lines, no saga); `quiet_for` backdates their last event."""
    now = timezone.now()
    last_event = now - quiet_for if quiet_for is not None else now
    orders = Order.objects.bulk_create(
        # A unique placeholder number until the primary key is known.
        Order(number=f"tmp-{uuid.uuid4().hex[:14]}", customer_name="Bulk Row", customer_email="rows@example.com",
              status=status, saga_status=saga_status, last_event_at=last_event)
        for _ in range(count)
    )
    for order in orders:
        order.number = f"{prefix}-{order.pk:06d}"
        order.workflow_id = f"order-{order.pk}"
    Order.objects.bulk_update(orders, ["number", "workflow_id"])
    return orders


def healthy_orders_create(count: int) -> None:
    """Half finished sagas, half running ones that recorded an event just now."""
    order_rows_create(count // 2, saga_status=SagaStatus.COMPLETED, status=OrderStatus.COMPLETED,
                      quiet_for=timedelta(days=2))
    order_rows_create(count - count // 2, saga_status=SagaStatus.RUNNING, status=OrderStatus.PROCESSING)


def order_backdate(order_id: int, seconds: float) -> None:
    """Make an order look quiet: its last event (and creation) `seconds` ago."""
    moment = timezone.now() - timedelta(seconds=seconds)
    Order.objects.filter(pk=order_id).update(last_event_at=moment, created_at=moment)


def saga_event_count(order_id: int) -> int:
    return SagaEvent.objects.filter(order_id=order_id).count()
