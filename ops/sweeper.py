"""The stalled-saga sweeper: find sagas that have gone quiet, ask Temporal why, flag them.

A saga is *stalled* when its order is in an active saga status (pending, running,
compensating) and has recorded no saga event for SWEEPER_STALL_SECONDS. Only those are
described in Temporal, so a sweep costs the same whatever the number of healthy orders:
the candidate query walks the (saga_status, last_event_at) index of Order.

Stuck and follow-up sagas are not stalled: they wait for a person by design and have their
own queues. A flag clears itself once its order records a newer event, or finishes.
"""

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, FilteredRelation, Q
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

from orders.broadcast import publish
from orders.models import Order
from orders.status import TERMINAL_SAGA_STATUSES, SagaStatus, Step
from orders.temporal_client import run_with_client, workflow_ui_url

from .models import StallFlag, SweepRun

logger = logging.getLogger(__name__)

# Sagas that should be making progress on their own. Stuck and follow-up sagas wait for
# an operator and are listed in their own queues.
ACTIVE_SAGA_STATUSES = (SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING)

# Channel-layer group of pages that show the flags (see ops.consumers_background).
FLAGS_GROUP = "ops-flags"

Kind = StallFlag.Kind

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


# --- what Temporal says about one workflow (plain data, built from describe) ---------------


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
class Finding:
    kind: str
    detail: str
    workflow_status: str = ""
    task_queue: str = ""
    attempt: int | None = None


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


# --- classification: pure, so every reason is unit-tested from a describe response --------


def _ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return ""
    seconds = max(int((now - moment).total_seconds()), 0)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def activity_label(activity_type: str) -> str:
    return activity_type.replace("_", " ").capitalize()


def stall_classify(
    snapshot: WorkflowSnapshot, *, saga_status: str, polled: dict[tuple[str, str], bool | None], now: datetime
) -> Finding:
    """Why a saga shows no progress, in words an operator can act on.

    `polled[(queue, "workflow"|"activity")]` says whether a worker polls that queue
    (None: unknown). Checks go from the most certain diagnosis to the least.
    """
    status = snapshot.status
    if status == "not found":
        return Finding(Kind.WORKFLOW_MISSING, "No workflow exists for this order in Temporal.", status)
    if status == "terminated":
        detail = "Workflow terminated outside the app"
        return Finding(Kind.TERMINATED, f"{detail} ({snapshot.close_detail})" if snapshot.close_detail else detail, status)
    if status == "timed out":
        return Finding(Kind.TIMED_OUT, "Workflow timed out (its run or execution timeout passed); the order never finished.", status)
    if status != "running":
        extra = f": {snapshot.close_detail}" if snapshot.close_detail else ""
        label = SagaStatus(saga_status).label if saga_status in SagaStatus.values else saga_status
        return Finding(
            Kind.WORKFLOW_CLOSED,
            f"Workflow {status}{extra}, but the order still shows the saga {label}: its final event never reached the database.",
            status,
        )

    wf_queue = snapshot.task_queue
    if snapshot.workflow_task_attempt > 1:
        cause = f": {snapshot.workflow_task_failure}" if snapshot.workflow_task_failure else ""
        return Finding(
            Kind.WORKFLOW_TASK_FAILING,
            f"Workflow task failing, attempt {snapshot.workflow_task_attempt}: a bug in workflow code{cause}. "
            "Temporal retries it forever; fix and deploy the worker.",
            status, wf_queue, snapshot.workflow_task_attempt,
        )
    if snapshot.workflow_task_state == "scheduled" and polled.get((wf_queue, "workflow")) is False:
        return Finding(
            Kind.NO_POLLER,
            f"No worker polling the {wf_queue} queue: the workflow's next task has waited "
            f"{_ago(snapshot.workflow_task_scheduled_at, now)}.",
            status, wf_queue, snapshot.workflow_task_attempt,
        )

    for activity in snapshot.activities:
        label = activity_label(activity.activity_type)
        if activity.state == "scheduled" and polled.get((activity.task_queue, "activity")) is False:
            return Finding(
                Kind.NO_POLLER,
                f"No worker polling the {activity.task_queue} queue: {label} has waited "
                f"{_ago(activity.scheduled_at, now)} (attempt {activity.attempt}).",
                status, activity.task_queue, activity.attempt,
            )
    for activity in snapshot.activities:
        label = activity_label(activity.activity_type)
        if activity.attempt > 1:
            of = f" of {activity.maximum_attempts}" if activity.maximum_attempts else ""
            failure = activity.last_failure or "no failure recorded"
            return Finding(
                Kind.ACTIVITY_RETRYING,
                f"Activity retrying: {label}: {failure}, attempt {activity.attempt}{of}.",
                status, activity.task_queue, activity.attempt,
            )
    for activity in snapshot.activities:
        label = activity_label(activity.activity_type)
        if activity.state == "scheduled":
            return Finding(
                Kind.BACKLOG,
                f"{label} has waited {_ago(activity.scheduled_at, now)} for a worker; workers poll "
                f"{activity.task_queue} but are busy (or the poller just stopped).",
                status, activity.task_queue, activity.attempt,
            )
        heartbeat = f", last heartbeat {_ago(activity.last_heartbeat_at, now)} ago" if activity.last_heartbeat_at else ""
        return Finding(
            Kind.ACTIVITY_RUNNING,
            f"{label} still running after {_ago(activity.last_started_at, now)}{heartbeat}.",
            status, activity.task_queue, activity.attempt,
        )
    if snapshot.workflow_task_state:
        return Finding(
            Kind.BACKLOG,
            f"The workflow's next task has waited {_ago(snapshot.workflow_task_scheduled_at, now)} for a busy worker on {wf_queue}.",
            status, wf_queue, snapshot.workflow_task_attempt,
        )
    return Finding(
        Kind.IDLE,
        "Workflow is running but has no activity or task pending: it is waiting for a timer or a signal "
        "while the order shows it busy.",
        status, wf_queue,
    )


# --- asking Temporal -----------------------------------------------------------------------


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


async def _describe(client, workflow_id: str) -> WorkflowSnapshot:
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
            logger.warning("could not read the history of %s", workflow_id, exc_info=True)
    return snapshot


async def _queue_polled(client, queue: str, kind: str, fresh_seconds: float) -> bool | None:
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


@dataclass
class Inspection:
    snapshots: dict[str, WorkflowSnapshot]
    polled: dict[tuple[str, str], bool | None]
    errors: dict[str, str]


def workflows_inspect(workflow_ids: list[str]) -> Inspection:
    """Describe the workflows (and the queues their pending work waits on), concurrently."""
    concurrency = settings.SWEEPER_DESCRIBE_CONCURRENCY
    fresh = settings.SWEEPER_POLLER_FRESH_SECONDS

    async def inspect(client) -> Inspection:
        limit = asyncio.Semaphore(concurrency)

        async def one(workflow_id: str):
            async with limit:
                return await _describe(client, workflow_id)

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
        answers = await asyncio.gather(*(_queue_polled(client, q, k, fresh) for q, k in queues))
        return Inspection(snapshots, dict(zip(queues, answers)), errors)

    try:
        return run_with_client(inspect, timeout=settings.SWEEPER_TEMPORAL_TIMEOUT_SECONDS)
    except Exception as exc:
        raise TemporalUnavailable(f"Could not reach Temporal: {exc}") from exc


# --- selectors -----------------------------------------------------------------------------


def _stall_cutoff(now: datetime) -> datetime:
    return now - timedelta(seconds=settings.SWEEPER_STALL_SECONDS)


def stalled_orders_querysets(*, now: datetime) -> list:
    """The two queries that find quiet active sagas, each a range scan of the order index
    (saga_status, last_event_at): sagas whose last event is older than the cutoff, and
    sagas that never recorded one and were placed before it.

    Two queries, not one with an OR: Postgres factors the shared status condition out of
    an OR and may then read every active order's index entry and filter, a cost that grows
    with the healthy ones. Each is joined to the order's open flag (at most one) to put
    never-checked sagas first, then the longest unchecked.
    """
    cutoff = _stall_cutoff(now)
    recheck = now - timedelta(seconds=settings.SWEEPER_RECHECK_SECONDS)
    quiet = [
        Q(saga_status__in=ACTIVE_SAGA_STATUSES, last_event_at__lt=cutoff),
        Q(saga_status__in=ACTIVE_SAGA_STATUSES, last_event_at=None, created_at__lt=cutoff),
    ]
    return [
        Order.objects.filter(condition)
        .annotate(open_flag=FilteredRelation("stall_flags", condition=Q(stall_flags__cleared_at=None)))
        .filter(Q(open_flag__checked_at=None) | Q(open_flag__checked_at__lt=recheck))
        .annotate(flag_checked_at=F("open_flag__checked_at"))
        .order_by(F("open_flag__checked_at").asc(nulls_first=True), F("last_event_at").asc(nulls_first=True), "pk")
        .only("pk", "number", "workflow_id", "saga_status", "current_step", "last_event_at", "created_at")
        for condition in quiet
    ]


def _sweep_order_key(order: Order) -> tuple:
    far_past = datetime.min.replace(tzinfo=UTC)
    checked = order.flag_checked_at
    return (checked is not None, checked or far_past, order.last_event_at or far_past, order.pk)


def stalled_orders(*, now: datetime, limit: int) -> list[Order]:
    """Up to `limit` quiet active sagas, never-checked ones first, then the longest unchecked.

    Two index range scans: healthy orders (recent events) and finished ones are never read.
    """
    found = [order for qs in stalled_orders_querysets(now=now) for order in qs[:limit]]
    return sorted(found, key=_sweep_order_key)[:limit]


def _moved_or_finished() -> Q:
    """Open flags whose order has recorded something since, or left the active statuses."""
    return (
        Q(order__last_event_at__gt=F("order_last_event_at"))
        | Q(order_last_event_at=None, order__last_event_at__isnull=False)
        | ~Q(order__saga_status__in=ACTIVE_SAGA_STATUSES)
    )


@dataclass
class FlagRow:
    """One flagged saga as the pages (and the websocket message) show it."""

    flag_id: int
    order_id: int
    order_number: str
    workflow_id: str
    kind: str
    kind_label: str
    detail: str
    saga_status_label: str
    current_step_label: str
    flagged_at: datetime
    checked_at: datetime
    temporal_url: str = ""

    def to_message(self) -> dict:
        data = asdict(self)
        data["flagged_at"] = self.flagged_at.isoformat()
        data["checked_at"] = self.checked_at.isoformat()
        return data

    @classmethod
    def from_message(cls, data: dict) -> "FlagRow":
        return cls(**{
            **data,
            "flagged_at": datetime.fromisoformat(data["flagged_at"]),
            "checked_at": datetime.fromisoformat(data["checked_at"]),
        })


def _flag_row(flag: StallFlag) -> FlagRow:
    order = flag.order
    return FlagRow(
        flag_id=flag.pk,
        order_id=order.pk,
        order_number=order.number or f"order {order.pk}",
        workflow_id=order.workflow_id or "",
        kind=flag.kind,
        kind_label=flag.get_kind_display(),
        detail=flag.detail,
        saga_status_label=order.get_saga_status_display(),
        current_step_label=Step(order.current_step).label if order.current_step in Step.values else "",
        flagged_at=flag.created_at,
        checked_at=flag.checked_at,
        temporal_url=workflow_ui_url(order.workflow_id or ""),
    )


@dataclass
class FlagList:
    rows: list[FlagRow]
    total: int


def stall_flags_open(*, limit: int | None = None) -> FlagList:
    """Open flags whose saga has not moved since (a moved saga drops off at once, before the
    next sweep clears its flag). Two queries, whatever the number of flags or orders."""
    flags = (
        StallFlag.objects.filter(cleared_at=None)
        .exclude(_moved_or_finished())
        .select_related("order")
        .order_by("created_at", "id")
    )
    total = flags.count()
    rows = [_flag_row(f) for f in (flags[:limit] if limit else flags)]
    return FlagList(rows=rows, total=total)


def sweeper_last_run() -> SweepRun | None:
    return SweepRun.objects.order_by("-started_at", "-id").first()


def stall_flag_for_order(order_id: int) -> StallFlag | None:
    return StallFlag.objects.filter(order_id=order_id, cleared_at=None).exclude(_moved_or_finished()).first()


# --- services ------------------------------------------------------------------------------


def stall_flags_clear(*, now: datetime) -> int:
    """Clear open flags whose saga moved again or finished. Returns how many."""
    moved = list(
        StallFlag.objects.filter(cleared_at=None).filter(_moved_or_finished())
        .values_list("pk", "order__saga_status")
    )
    if not moved:
        return 0
    by_reason: dict[str, list[int]] = {}
    for pk, saga_status in moved:
        if saga_status in TERMINAL_SAGA_STATUSES:
            reason = f"saga {SagaStatus(saga_status).label}"
        elif saga_status not in ACTIVE_SAGA_STATUSES:
            reason = f"saga now {SagaStatus(saga_status).label}"
        else:
            reason = "saga moved again"
        by_reason.setdefault(reason, []).append(pk)
    for reason, pks in by_reason.items():
        StallFlag.objects.filter(pk__in=pks, cleared_at=None).update(cleared_at=now, clear_reason=reason)
    return len(moved)


def stall_flags_record(*, orders: Iterable[Order], findings: dict[int, Finding], now: datetime) -> int:
    """Create or refresh one open flag per order with a finding. Returns how many."""
    orders = [o for o in orders if o.pk in findings]
    if not orders:
        return 0
    open_flags = {f.order_id: f for f in StallFlag.objects.filter(order_id__in=[o.pk for o in orders], cleared_at=None)}
    created, updated = [], []
    for order in orders:
        finding = findings[order.pk]
        values = {
            "kind": finding.kind, "detail": finding.detail[:2000], "workflow_status": finding.workflow_status,
            "task_queue": finding.task_queue[:200], "attempt": finding.attempt, "checked_at": now,
        }
        flag = open_flags.get(order.pk)
        if flag is None:
            created.append(StallFlag(order=order, order_last_event_at=order.last_event_at, **values))
        else:
            for name, value in values.items():
                setattr(flag, name, value)
            updated.append(flag)
    StallFlag.objects.bulk_create(created)
    StallFlag.objects.bulk_update(updated, ["kind", "detail", "workflow_status", "task_queue", "attempt", "checked_at"])
    return len(created) + len(updated)


def stall_flags_card_context() -> dict:
    """What the flagged-sagas card shows: the first flags, their number, the last sweep."""
    last_run = sweeper_last_run()
    return {
        "flags": stall_flags_open(limit=settings.SWEEPER_DASHBOARD_FLAGS),
        "swept_at": last_run.started_at if last_run else None,
        "sweep_error": last_run.error if last_run else "",
    }


def stall_flags_broadcast() -> None:
    """Send the card's content to every page that shows it (see ops.consumers_background)."""
    context = stall_flags_card_context()
    publish([FLAGS_GROUP], {
        "type": "stall.flags",
        "total": context["flags"].total,
        "flags": [row.to_message() for row in context["flags"].rows],
        "swept_at": context["swept_at"].isoformat() if context["swept_at"] else None,
        "sweep_error": context["sweep_error"],
    })


@dataclass
class SweepResult:
    candidates: int = 0
    described: int = 0
    flagged: int = 0
    cleared: int = 0
    restarted: int = 0
    errors: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def stalled_saga_sweep() -> SweepResult:
    """One sweep: clear flags of sagas that moved, describe the quiet ones, flag what was found.

    Sagas whose order is still 'pending' and that have no workflow at all (Temporal was
    down when the order was placed) are started again (saga_start is idempotent).
    Raises TemporalUnavailable when Temporal answers nothing; the flags are left as they were.
    Locks: none (one sweep at a time is the task's job).
    """
    started = timezone.now()
    result = SweepResult()
    result.cleared = stall_flags_clear(now=started)
    candidates = stalled_orders(now=started, limit=settings.SWEEPER_MAX_DESCRIBES)
    result.candidates = len(candidates)
    findings: dict[int, Finding] = {}
    error = ""
    if candidates:
        workflow_ids = [o.workflow_id for o in candidates if o.workflow_id]
        try:
            inspection = workflows_inspect(workflow_ids) if workflow_ids else Inspection({}, {}, {})
            if workflow_ids and not inspection.snapshots:
                raise TemporalUnavailable("Temporal answered no describe: " + next(iter(inspection.errors.values()), ""))
        except TemporalUnavailable as exc:
            SweepRun.objects.create(started_at=started, finished_at=timezone.now(), candidates=len(candidates),
                                    cleared=result.cleared, error=str(exc)[:2000])
            transaction.on_commit(stall_flags_broadcast)
            raise
        result.described = len(inspection.snapshots)
        result.errors = len(inspection.errors)
        if inspection.errors:
            error = "; ".join(f"{w}: {e}" for w, e in list(inspection.errors.items())[:5])
        now = timezone.now()
        for order in candidates:
            snapshot = inspection.snapshots.get(order.workflow_id) if order.workflow_id else WorkflowSnapshot("", "not found")
            if snapshot is None:
                continue  # Temporal did not answer for this one: keep its flag as it was
            finding = stall_classify(snapshot, saga_status=order.saga_status, polled=inspection.polled, now=now)
            if finding.kind == Kind.WORKFLOW_MISSING and order.saga_status == SagaStatus.PENDING:
                finding, restarted = _restart_unstarted(order)
                result.restarted += restarted
            findings[order.pk] = finding
    result.flagged = stall_flags_record(orders=candidates, findings=findings, now=timezone.now())
    result.seconds = (timezone.now() - started).total_seconds()
    SweepRun.objects.create(
        started_at=started, finished_at=timezone.now(), candidates=result.candidates, described=result.described,
        flagged=result.flagged, cleared=result.cleared, restarted=result.restarted, error=error[:2000],
    )
    SweepRun.objects.filter(started_at__lt=started - timedelta(seconds=settings.SWEEPER_HISTORY_SECONDS)).delete()
    # Every sweep, not only on changes: the card says when the sweeper last ran.
    transaction.on_commit(stall_flags_broadcast)
    return result


def _restart_unstarted(order: Order) -> tuple[Finding, bool]:
    """A pending order with no workflow: Temporal was down when it was placed. Start it."""
    if not settings.SWEEPER_RESTART_UNSTARTED or not order.workflow_id:
        return Finding(Kind.WORKFLOW_MISSING, "The saga was never started: no workflow exists for this order.", "not found"), False
    from orders.services.saga import (
        saga_start,  # orders.services imports broadcast, not ops
    )

    if saga_start(order_id=order.pk):
        detail = "The saga had never started (no workflow existed); the sweeper started it again."
        return Finding(Kind.WORKFLOW_MISSING, detail, "not found"), True
    detail = "The saga was never started and starting it again failed; see the order's events."
    return Finding(Kind.WORKFLOW_MISSING, detail, "not found"), False
