"""The delivery tracker: long timers on the time-skipping test server."""

import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from orders.models import SagaEvent, Shipment
from orders.saga.activities import (
    check_delivery, delivery_end, delivery_followup_open, mark_delivered, notify_delivery, record_transition,
)
from orders.saga.delivery_tracker import DeliveryTrackingWorkflow
from orders.saga.shared import DeliveredSignal, DeliveryInput, delivery_workflow_id
from orders.saga.worker import workflow_runner
from orders.status import OrderStatus

from .conftest import order_state
from .factories import make_order

pytestmark = pytest.mark.django_db(transaction=True)

TEST_SERVER = Path(sys.executable).parent / "temporal-test-server"


async def test_completed_saga_starts_a_tracker(saga_env):
    order = await sync_to_async(make_order)()
    assert await saga_env.result(order) == "completed"
    tracker = saga_env.client.get_workflow_handle(delivery_workflow_id(order.workflow_id))
    assert (await tracker.describe()).status == WorkflowExecutionStatus.RUNNING
    await tracker.signal(DeliveryTrackingWorkflow.delivered, DeliveredSignal(source="staff"))
    assert await tracker.result() == "delivered"
    assert (await sync_to_async(order_state)(order.pk)).status == OrderStatus.DELIVERED


async def test_tracker_continues_as_new_then_completes_on_delivered(saga_env):
    # A real saga on the dev server leaves a booked shipment; its own tracker is stopped
    # and a new one is run on the time-skipping server, where six-hour waits take no time.
    order = await sync_to_async(make_order)()
    assert await saga_env.result(order) == "completed"
    await saga_env.client.get_workflow_handle(delivery_workflow_id(order.workflow_id)).terminate("replaced by the test's tracker")

    env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=str(TEST_SERVER))
    try:
        queue = f"delivery-{uuid.uuid4().hex[:8]}"
        async with Worker(
            env.client, task_queue=queue, workflows=[DeliveryTrackingWorkflow],
            activities=[check_delivery, mark_delivered, delivery_end, delivery_followup_open, notify_delivery,
                        record_transition], activity_executor=ThreadPoolExecutor(4),
            workflow_runner=workflow_runner(),
        ):
            handle = await env.client.start_workflow(
                DeliveryTrackingWorkflow.run,
                DeliveryInput(order_id=order.pk, check_interval_seconds=6 * 3600, checks_per_run=3),
                id=delivery_workflow_id(order.workflow_id), task_queue=queue,
            )
            first_run = handle.result_run_id
            await env.sleep(timedelta(hours=6 * 7 + 1))  # seven carrier checks: two continue-as-new
            latest = env.client.get_workflow_handle(handle.id)
            assert await latest.query(DeliveryTrackingWorkflow.checks_done) == 7
            first = env.client.get_workflow_handle(handle.id, run_id=first_run)
            assert (await first.describe()).status == WorkflowExecutionStatus.CONTINUED_AS_NEW
            # Each run's history stays small: three checks' worth of events.
            events = [e async for e in latest.fetch_history_events()]
            assert len(events) < 60

            await latest.signal(DeliveryTrackingWorkflow.delivered, DeliveredSignal(source="carrier webhook"))
            assert await latest.result() == "delivered"
    finally:
        await env.shutdown()

    order = await sync_to_async(order_state)(order.pk)
    assert order.status == OrderStatus.DELIVERED
    assert await sync_to_async(lambda: Shipment.objects.get(order=order).state)() == Shipment.State.DELIVERED
    detail = await sync_to_async(lambda: order.events.filter(kind=SagaEvent.Kind.FINISHED, step="ship").get().detail)()
    assert "carrier webhook" in detail
