"""The stalled-saga sweeper: it describes only quiet sagas, says why each is stalled, and
clears its flag when the saga moves again. End-to-end tests go through the real Celery
worker (Redis broker) and a real Temporal dev server."""

import asyncio
import subprocess
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.test.utils import CaptureQueriesContext
from temporalio import workflow
from temporalio.api.enums.v1 import (
    PendingActivityState,
    PendingWorkflowTaskState,
    TimeoutType,
    WorkflowExecutionStatus,
)
from temporalio.api.failure.v1 import (
    ApplicationFailureInfo,
    Failure,
    TimeoutFailureInfo,
)
from temporalio.api.workflow.v1 import PendingActivityInfo, PendingWorkflowTaskInfo
from temporalio.api.workflowservice.v1 import DescribeWorkflowExecutionResponse
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from ops.models import StallFlag, SweepRun
from ops.stalls.classify import stall_classify
from ops.stalls.inspect import workflow_snapshot_from_describe
from ops.stalls.selectors import stall_flags_open
from ops.stalls.services import stalled_saga_sweep
from ops.tasks import stalled_saga_sweep as sweep_task
from orders.models import Order
from orders.saga.shared import SagaInput
from orders.status import OrderStatus, SagaStatus

from .background_support import healthy_orders_create, order_backdate, order_rows_create
from .conftest import order_state, wait_for
from .factories import make_order
from .temporal_server import temporal_cli

# Fixtures celery_worker and orders_only_env, defined once for all modules that use them.
pytest_plugins = ["tests.background_fixtures"]

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


# --- classification from describe responses (no server needed) ---------------------------


def describe(*, status=WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING, activities=(), workflow_task=None,
             queue="orders") -> DescribeWorkflowExecutionResponse:
    response = DescribeWorkflowExecutionResponse()
    response.workflow_execution_info.execution.workflow_id = "order-1"
    response.workflow_execution_info.status = status
    response.execution_config.task_queue.name = queue
    for activity in activities:
        response.pending_activities.append(activity)
    if workflow_task is not None:
        response.pending_workflow_task.CopyFrom(workflow_task)
    return response


def pending_activity(*, name="charge_payment", attempt=1, state=PendingActivityState.PENDING_ACTIVITY_STATE_SCHEDULED,
                     queue="payments", failure: Failure | None = None) -> PendingActivityInfo:
    info = PendingActivityInfo(activity_id="1", state=state, attempt=attempt, maximum_attempts=10)
    info.activity_type.name = name
    info.activity_options.task_queue.name = queue
    info.scheduled_time.FromDatetime(NOW - timedelta(minutes=4))
    if failure is not None:
        info.last_failure.CopyFrom(failure)
    return info


def classify(response, polled=None, saga_status=SagaStatus.RUNNING):
    snapshot = workflow_snapshot_from_describe(response)
    return stall_classify(snapshot, saga_status=saga_status, polled=polled or {}, now=NOW)


def test_no_worker_polling_the_activity_queue():
    finding = classify(describe(activities=[pending_activity()]), polled={("payments", "activity"): False})
    assert finding.kind == StallFlag.Kind.NO_POLLER
    assert finding.detail.startswith("No worker polling the payments queue: Charge payment has waited 4 min")
    assert finding.task_queue == "payments"


def test_activity_retrying_says_the_last_failure_and_attempt():
    failure = Failure(message="gateway timeout", application_failure_info=ApplicationFailureInfo(type="GatewayUnavailable"))
    started = PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
    finding = classify(describe(activities=[pending_activity(attempt=7, state=started, failure=failure)]),
                       polled={("payments", "activity"): True})
    assert finding.kind == StallFlag.Kind.ACTIVITY_RETRYING
    assert finding.detail == "Activity retrying: Charge payment: gateway timeout, attempt 7 of 10."
    assert finding.attempt == 7


def test_activity_timeouts_are_named():
    failure = Failure(message="activity timeout", timeout_failure_info=TimeoutFailureInfo(
        timeout_type=TimeoutType.TIMEOUT_TYPE_HEARTBEAT))
    finding = classify(describe(activities=[pending_activity(name="arrange_shipping", attempt=3, queue="orders",
                                                             failure=failure)]))
    assert "Arrange shipping: heartbeat timeout, attempt 3" in finding.detail


def test_workflow_task_failing_is_a_bug_in_workflow_code():
    task = PendingWorkflowTaskInfo(state=PendingWorkflowTaskState.PENDING_WORKFLOW_TASK_STATE_SCHEDULED, attempt=5)
    snapshot = workflow_snapshot_from_describe(describe(workflow_task=task))
    snapshot.workflow_task_failure = "KeyError: 'total'"
    finding = stall_classify(snapshot, saga_status=SagaStatus.RUNNING, polled={("orders", "workflow"): True}, now=NOW)
    assert finding.kind == StallFlag.Kind.WORKFLOW_TASK_FAILING
    assert finding.detail.startswith("Workflow task failing, attempt 5: a bug in workflow code: KeyError: 'total'")


def test_no_worker_polling_the_workflow_queue():
    task = PendingWorkflowTaskInfo(state=PendingWorkflowTaskState.PENDING_WORKFLOW_TASK_STATE_SCHEDULED, attempt=1)
    task.scheduled_time.FromDatetime(NOW - timedelta(seconds=90))
    finding = classify(describe(workflow_task=task), polled={("orders", "workflow"): False})
    assert finding.kind == StallFlag.Kind.NO_POLLER
    assert finding.detail.startswith("No worker polling the orders queue: the workflow's next task has waited 90 s")


@pytest.mark.parametrize("status, kind, words", [
    (WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_TERMINATED, StallFlag.Kind.TERMINATED, "terminated outside the app"),
    (WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_TIMED_OUT, StallFlag.Kind.TIMED_OUT, "timed out"),
    (WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_COMPLETED, StallFlag.Kind.WORKFLOW_CLOSED, "Workflow completed"),
    (WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_FAILED, StallFlag.Kind.WORKFLOW_CLOSED, "Workflow failed"),
])
def test_closed_workflows(status, kind, words):
    finding = classify(describe(status=status))
    assert finding.kind == kind
    assert words in finding.detail


def test_running_activity_and_idle_workflow():
    started = PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
    activity = pending_activity(name="arrange_shipping", state=started, queue="orders")
    activity.last_started_time.FromDatetime(NOW - timedelta(minutes=6))
    activity.last_heartbeat_time.FromDatetime(NOW - timedelta(seconds=3))
    finding = classify(describe(activities=[activity]))
    assert finding.kind == StallFlag.Kind.ACTIVITY_RUNNING
    assert finding.detail == "Arrange shipping still running after 6 min, last heartbeat 3 s ago."
    assert classify(describe()).kind == StallFlag.Kind.IDLE


def test_busy_workers_are_a_backlog_not_a_missing_worker():
    finding = classify(describe(activities=[pending_activity()]), polled={("payments", "activity"): True})
    assert finding.kind == StallFlag.Kind.BACKLOG


# --- cost: flat with the number of healthy orders ----------------------------------------


def _sweep_cost(django_capture_on_commit_callbacks):
    StallFlag.objects.all().delete()
    with CaptureQueriesContext(connection) as queries, django_capture_on_commit_callbacks(execute=True):
        result = stalled_saga_sweep()
    return result, len(queries)


@pytest.mark.django_db
def test_sweep_cost_does_not_grow_with_healthy_orders(temporal_server, settings, django_capture_on_commit_callbacks):
    settings.SWEEPER_STALL_SECONDS = 60
    # Quiet sagas whose workflows do not exist: each is described once and flagged.
    stalled = order_rows_create(3, saga_status=SagaStatus.RUNNING, status=OrderStatus.PROCESSING,
                                quiet_for=timedelta(minutes=10))
    healthy_orders_create(50)
    small, small_queries = _sweep_cost(django_capture_on_commit_callbacks)
    healthy_orders_create(500)
    large, large_queries = _sweep_cost(django_capture_on_commit_callbacks)

    assert small.candidates == large.candidates == 3
    assert small.described == large.described == 3
    assert small_queries == large_queries
    flags = StallFlag.objects.filter(cleared_at=None)
    assert {f.order_id for f in flags} == {o.pk for o in stalled}
    assert {f.kind for f in flags} == {StallFlag.Kind.WORKFLOW_MISSING}


@pytest.mark.django_db
def test_recheck_interval_and_cap_bound_the_describes(temporal_server, settings):
    settings.SWEEPER_STALL_SECONDS = 60
    settings.SWEEPER_MAX_DESCRIBES = 4
    settings.SWEEPER_RECHECK_SECONDS = 3600
    order_rows_create(6, saga_status=SagaStatus.RUNNING, status=OrderStatus.PROCESSING, quiet_for=timedelta(minutes=5))
    first = stalled_saga_sweep()
    second = stalled_saga_sweep()
    third = stalled_saga_sweep()
    # Never-checked sagas go first; a flag just checked waits for the recheck interval.
    assert (first.described, second.described, third.described) == (4, 2, 0)
    assert StallFlag.objects.filter(cleared_at=None).count() == 6


# --- end to end: Celery worker, Redis broker, Temporal dev server -------------------------


pytestmark_e2e = pytest.mark.django_db(transaction=True)


async def _sweep_via_celery() -> dict:
    result = await sync_to_async(sweep_task.delay)()
    return await sync_to_async(result.get)(timeout=60)


def _open_flag(order_id: int) -> StallFlag | None:
    return StallFlag.objects.filter(order_id=order_id, cleared_at=None).first()


@pytestmark_e2e
async def test_saga_without_payments_worker_is_flagged_then_clears_when_it_moves(
    orders_only_env, celery_worker, settings
):
    settings.SWEEPER_STALL_SECONDS = 1
    order = await sync_to_async(make_order)()
    # Validate and reserve run (orders queue); the charge waits on the payments queue.
    await wait_for(lambda: order_state(order.pk).current_step == "reserve"
                   and order_state(order.pk).events.filter(step="reserve", kind="succeeded").exists(),
                   message="reserve done")
    await asyncio.sleep(1.5)

    summary = await _sweep_via_celery()
    assert summary["described"] == 1
    flag = await sync_to_async(_open_flag)(order.pk)
    assert flag is not None, summary
    assert flag.kind == StallFlag.Kind.NO_POLLER
    assert flag.detail.startswith(f"No worker polling the {orders_only_env.payments_queue} queue: Charge payment has waited")
    assert flag.task_queue == orders_only_env.payments_queue
    listed = await sync_to_async(stall_flags_open)()
    assert [row.order_id for row in listed.rows] == [order.pk]

    # The payments worker comes back: the saga moves on and finishes.
    orders_only_env.start(("payments",))
    await wait_for(lambda: order_state(order.pk).saga_status == SagaStatus.COMPLETED, message="completed")
    # The pages stop showing it at once; the next sweep clears the flag for good.
    assert (await sync_to_async(stall_flags_open)()).total == 0
    summary = await _sweep_via_celery()
    assert summary["cleared"] == 1
    cleared = await sync_to_async(StallFlag.objects.get)(pk=flag.pk)
    assert cleared.cleared_at is not None and cleared.clear_reason == "saga completed"
    assert await sync_to_async(SweepRun.objects.count)() == 2


@pytestmark_e2e
async def test_flag_clears_when_a_stalled_saga_records_an_event(orders_only_env, celery_worker, settings):
    settings.SWEEPER_STALL_SECONDS = 1
    order = await sync_to_async(make_order)()
    await wait_for(lambda: order_state(order.pk).events.filter(step="reserve", kind="succeeded").exists(),
                   message="reserve done")
    await asyncio.sleep(1.5)
    await _sweep_via_celery()
    assert await sync_to_async(_open_flag)(order.pk) is not None
    # The charge starts (an event) but is slow: the saga moved, so the flag goes.
    orders_only_env.start(("payments",))
    await wait_for(lambda: order_state(order.pk).events.filter(step="charge").exists(), message="charge started")
    summary = await _sweep_via_celery()
    assert summary["cleared"] == 1
    assert await sync_to_async(_open_flag)(order.pk) is None


@pytestmark_e2e
async def test_workflow_terminated_with_the_cli_is_flagged_as_terminated_outside_the_app(
    orders_only_env, celery_worker, temporal_server, settings
):
    settings.SWEEPER_STALL_SECONDS = 1
    order = await sync_to_async(make_order)()
    await wait_for(lambda: order_state(order.pk).events.filter(step="reserve", kind="succeeded").exists(),
                   message="reserve done")
    terminate = await asyncio.create_subprocess_exec(
        temporal_cli(), "workflow", "terminate", "--workflow-id", order.workflow_id,
        "--reason", "cleanup by hand", "--address", temporal_server.address,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    _, err = await terminate.communicate()
    assert terminate.returncode == 0, err.decode()
    await asyncio.sleep(1.5)

    await _sweep_via_celery()
    flag = await sync_to_async(_open_flag)(order.pk)
    assert flag is not None
    assert flag.kind == StallFlag.Kind.TERMINATED
    assert flag.workflow_status == "terminated"
    assert flag.detail.startswith("Workflow terminated outside the app")
    assert "reason: cleanup by hand" in flag.detail
    # The order is left as the saga last wrote it: running, with nothing to move it.
    assert (await sync_to_async(order_state)(order.pk)).saga_status == SagaStatus.RUNNING


@workflow.defn(name="OrderSaga")
class BrokenOrderSaga:
    """A saga build with a bug: its workflow task raises on every attempt."""

    @workflow.run
    async def run(self, input: SagaInput) -> str:
        raise KeyError("total")


@pytestmark_e2e
async def test_workflow_task_failing_is_flagged_as_a_bug_in_workflow_code(
    celery_worker, temporal_server, settings, transactional_db
):
    from temporalio.client import Client

    settings.SWEEPER_STALL_SECONDS = 1
    settings.SAGA_TASK_QUEUE = f"broken-{uuid.uuid4().hex[:8]}"
    client = await Client.connect(temporal_server.address)
    worker = Worker(client, task_queue=settings.SAGA_TASK_QUEUE, workflows=[BrokenOrderSaga],
                    workflow_runner=UnsandboxedWorkflowRunner())
    run = asyncio.create_task(worker.run())
    try:
        order = await sync_to_async(make_order)()
        handle = client.get_workflow_handle(order.workflow_id)

        async def failing_twice():
            description = await handle.describe()
            return description.raw_description.pending_workflow_task.attempt > 1

        deadline = asyncio.get_running_loop().time() + 30
        while not await failing_twice():
            assert asyncio.get_running_loop().time() < deadline, "workflow task never retried"
            await asyncio.sleep(0.2)
        await sync_to_async(order_backdate)(order.pk, 5)

        await _sweep_via_celery()
        flag = await sync_to_async(_open_flag)(order.pk)
        assert flag is not None
        assert flag.kind == StallFlag.Kind.WORKFLOW_TASK_FAILING
        assert "a bug in workflow code" in flag.detail
        assert "total" in flag.detail  # the exception the workflow raised, from its history
        assert flag.attempt > 1
    finally:
        await handle.terminate("test finished")
        await worker.shutdown()
        await asyncio.gather(run, return_exceptions=True)


@pytestmark_e2e
async def test_pending_order_whose_saga_never_started_is_started_by_the_sweeper(saga_env, settings):
    settings.SWEEPER_STALL_SECONDS = 1
    # Temporal was down when the order was placed: no workflow, order pending.
    order = await sync_to_async(make_order)(start_saga=False)
    await sync_to_async(order_backdate)(order.pk, 5)
    result = await sync_to_async(stalled_saga_sweep)()
    assert result.restarted == 1
    flag = await sync_to_async(_open_flag)(order.pk)
    assert flag.kind == StallFlag.Kind.WORKFLOW_MISSING and "started it again" in flag.detail
    assert await saga_env.result(order) == "completed"
    await sync_to_async(stalled_saga_sweep)()
    assert await sync_to_async(_open_flag)(order.pk) is None


@pytest.mark.django_db
def test_stuck_and_finished_sagas_are_not_swept(temporal_server, settings):
    settings.SWEEPER_STALL_SECONDS = 1
    order_rows_create(2, saga_status=SagaStatus.STUCK, status=OrderStatus.PROCESSING, quiet_for=timedelta(hours=3))
    order_rows_create(2, saga_status=SagaStatus.NEEDS_FOLLOWUP, status=OrderStatus.PROCESSING,
                      quiet_for=timedelta(hours=3))
    order_rows_create(2, saga_status=SagaStatus.COMPENSATED, status=OrderStatus.FAILED, quiet_for=timedelta(hours=3))
    result = stalled_saga_sweep()
    assert result.candidates == 0 and result.described == 0
    assert not Order.objects.filter(stall_flags__isnull=False).exists()
