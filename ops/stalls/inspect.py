"""What Temporal says about the workflows of quiet sagas, as plain snapshots.

The only module of ops.stalls that talks to Temporal: describe a workflow (its pending
activities and workflow task), read the newest history events when they explain a closed
or failing workflow, and ask a task queue whether a worker polls it.
"""

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.utils import timezone
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import (
    EventType,
    PendingActivityState,
    PendingWorkflowTaskState,
    TaskQueueKind,
    TaskQueueType,
    TimeoutType,
    WorkflowExecutionStatus,
)
from temporalio.api.failure.v1 import Failure
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    DescribeTaskQueueRequest,
    DescribeWorkflowExecutionRequest,
    DescribeWorkflowExecutionResponse,
    GetWorkflowExecutionHistoryReverseRequest,
)
from temporalio.service import RPCError, RPCStatusCode

from orders.temporal_client import run_with_client

logger = logging.getLogger(__name__)

CLOSED_STATUS_NAMES = {
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_COMPLETED: "completed",
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_FAILED: "failed",
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_CANCELED: "cancelled",
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_TERMINATED: "terminated",
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_CONTINUED_AS_NEW: "continued as new",
    WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_TIMED_OUT: "timed out",
}
ACTIVITY_STATES = {
    PendingActivityState.PENDING_ACTIVITY_STATE_SCHEDULED: "scheduled",
    PendingActivityState.PENDING_ACTIVITY_STATE_STARTED: "started",
    PendingActivityState.PENDING_ACTIVITY_STATE_CANCEL_REQUESTED: "cancel requested",
}
TIMEOUT_NAMES = {
    TimeoutType.TIMEOUT_TYPE_START_TO_CLOSE: "start-to-close",
    TimeoutType.TIMEOUT_TYPE_SCHEDULE_TO_START: "schedule-to-start",
    TimeoutType.TIMEOUT_TYPE_SCHEDULE_TO_CLOSE: "schedule-to-close",
    TimeoutType.TIMEOUT_TYPE_HEARTBEAT: "heartbeat",
}


class TemporalUnavailable(Exception):
    """Temporal answered none of the sweep's questions; the task retries later."""


@dataclass
class ActivitySnapshot:
    activity_type: str
    state: str  # scheduled | started | cancel requested
    attempt: int
    maximum_attempts: int = 0
    task_queue: str = ""
    last_failure: str = ""
    scheduled_at: datetime | None = None
    last_started_at: datetime | None = None
    last_heartbeat_at: datetime | None = None


@dataclass
class WorkflowSnapshot:
    workflow_id: str
    status: str  # "running", a CLOSED_STATUS_NAMES value, or "not found"
    task_queue: str = ""
    activities: list[ActivitySnapshot] = field(default_factory=list)
    workflow_task_state: str = ""  # "", scheduled, started
    workflow_task_attempt: int = 0
    workflow_task_scheduled_at: datetime | None = None
    run_id: str = ""
    # Filled from history only when it explains the state: who terminated, why the
    # workflow failed, what the failing workflow task raised.
    close_detail: str = ""
    workflow_task_failure: str = ""


@dataclass
class Inspection:
    snapshots: dict[str, WorkflowSnapshot]
    # (task queue, "workflow" | "activity") -> a worker polls it (None: unknown)
    polled: dict[tuple[str, str], bool | None]
    errors: dict[str, str]


def _when(ts) -> datetime | None:
    return ts.ToDatetime(tzinfo=UTC) if ts is not None and (ts.seconds or ts.nanos) else None


def failure_message(failure: Failure | None) -> str:
    """A failure in a few words: its message, or which timeout fired, plus its root cause."""
    if failure is None or not failure.ListFields():
        return ""
    if failure.HasField("timeout_failure_info"):
        name = TIMEOUT_NAMES.get(failure.timeout_failure_info.timeout_type, "")
        text = f"{name} timeout" if name else (failure.message or "timeout")
    else:
        text = failure.message
    if failure.HasField("cause"):
        inner = failure_message(failure.cause)
        if inner and inner not in text:
            text = f"{text}: {inner}" if text else inner
    return text


def workflow_snapshot_from_describe(response: DescribeWorkflowExecutionResponse) -> WorkflowSnapshot:
    info = response.workflow_execution_info
    status = info.status
    snapshot = WorkflowSnapshot(
        workflow_id=info.execution.workflow_id,
        run_id=info.execution.run_id,
        status="running" if status == WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING
        else CLOSED_STATUS_NAMES.get(status, "unknown"),
        task_queue=response.execution_config.task_queue.name or info.task_queue,
    )
    for pending in response.pending_activities:
        queue = pending.activity_options.task_queue.name if pending.HasField("activity_options") else ""
        snapshot.activities.append(
            ActivitySnapshot(
                activity_type=pending.activity_type.name,
                state=ACTIVITY_STATES.get(pending.state, "scheduled"),
                attempt=pending.attempt or 1,
                maximum_attempts=pending.maximum_attempts,
                task_queue=queue or snapshot.task_queue,
                last_failure=failure_message(pending.last_failure) if pending.HasField("last_failure") else "",
                scheduled_at=_when(pending.scheduled_time),
                last_started_at=_when(pending.last_started_time),
                last_heartbeat_at=_when(pending.last_heartbeat_time),
            )
        )
    if response.HasField("pending_workflow_task"):
        task = response.pending_workflow_task
        snapshot.workflow_task_state = (
            "started" if task.state == PendingWorkflowTaskState.PENDING_WORKFLOW_TASK_STATE_STARTED else "scheduled"
        )
        snapshot.workflow_task_attempt = task.attempt or 1
        snapshot.workflow_task_scheduled_at = _when(task.original_scheduled_time) or _when(task.scheduled_time)
    return snapshot


async def _history_detail(client, snapshot: WorkflowSnapshot) -> None:
    """Fill close_detail / workflow_task_failure from the newest history events (one page)."""
    request = GetWorkflowExecutionHistoryReverseRequest(
        namespace=client.namespace,
        execution=WorkflowExecution(workflow_id=snapshot.workflow_id, run_id=snapshot.run_id),
        maximum_page_size=20,
    )
    response = await client.workflow_service.get_workflow_execution_history_reverse(request)
    for event in response.history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED:
            attrs = event.workflow_execution_terminated_event_attributes
            who = f"by {attrs.identity}" if attrs.identity else ""
            why = f"reason: {attrs.reason}" if attrs.reason else ""
            snapshot.close_detail = ", ".join(p for p in (who, why) if p)
            return
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED:
            snapshot.close_detail = failure_message(event.workflow_execution_failed_event_attributes.failure)
            return
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            snapshot.workflow_task_failure = failure_message(event.workflow_task_failed_event_attributes.failure)
            return


async def workflow_describe(client, workflow_id: str) -> WorkflowSnapshot:
    """One workflow's snapshot: a describe, plus one history page when it explains the state."""
    try:
        response = await client.workflow_service.describe_workflow_execution(
            DescribeWorkflowExecutionRequest(namespace=client.namespace, execution=WorkflowExecution(workflow_id=workflow_id))
        )
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return WorkflowSnapshot(workflow_id=workflow_id, status="not found")
        raise
    snapshot = workflow_snapshot_from_describe(response)
    if snapshot.status in ("terminated", "failed") or snapshot.workflow_task_attempt > 1:
        try:
            await _history_detail(client, snapshot)
        except RPCError:
            logger.warning("could not read the history of %s", workflow_id, exc_info=True,
                           extra={"workflow_id": workflow_id})  # the line names its order too
    return snapshot


async def task_queue_polled(client, queue: str, kind: str, fresh_seconds: float) -> bool | None:
    """Whether a worker polled the queue (kind "workflow" or "activity") lately; None: unknown."""
    task_queue_type = TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW if kind == "workflow" else TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY
    try:
        response = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(name=queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
                task_queue_type=task_queue_type,
            )
        )
    except RPCError:
        logger.warning("could not describe task queue %s", queue, exc_info=True)
        return None
    # The server remembers pollers for minutes after they stop: only recent ones count.
    cutoff = timezone.now() - timedelta(seconds=fresh_seconds)
    return any((_when(p.last_access_time) or cutoff) > cutoff for p in response.pollers)


def workflows_inspect(workflow_ids: list[str]) -> Inspection:
    """Describe the workflows (and the queues their pending work waits on), concurrently.

    Raises TemporalUnavailable when Temporal cannot be reached at all.
    """
    concurrency = settings.SWEEPER_DESCRIBE_CONCURRENCY
    fresh = settings.SWEEPER_POLLER_FRESH_SECONDS

    async def inspect(client) -> Inspection:
        limit = asyncio.Semaphore(concurrency)

        async def one(workflow_id: str):
            async with limit:
                return await workflow_describe(client, workflow_id)

        results = await asyncio.gather(*(one(w) for w in workflow_ids), return_exceptions=True)
        snapshots, errors = {}, {}
        for workflow_id, result in zip(workflow_ids, results):
            if isinstance(result, BaseException):
                errors[workflow_id] = str(result) or type(result).__name__
            else:
                snapshots[workflow_id] = result
        queues = set()
        for snap in snapshots.values():
            if snap.status != "running":
                continue
            if snap.workflow_task_state == "scheduled":
                queues.add((snap.task_queue, "workflow"))
            queues.update((a.task_queue, "activity") for a in snap.activities if a.state == "scheduled")
        queues = sorted(queues)
        answers = await asyncio.gather(*(task_queue_polled(client, q, k, fresh) for q, k in queues))
        return Inspection(snapshots, dict(zip(queues, answers)), errors)

    try:
        return run_with_client(inspect, timeout=settings.SWEEPER_TEMPORAL_TIMEOUT_SECONDS)
    except Exception as exc:
        raise TemporalUnavailable(f"Could not reach Temporal: {exc}") from exc
