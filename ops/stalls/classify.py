"""Why a quiet saga shows no progress: a StallFlag kind and words an operator can act on.

Pure: no database, no Temporal. Every reason is unit-tested from a describe response
(tests/test_background_sweeper.py).
"""

from dataclasses import dataclass
from datetime import datetime

from orders.status import SagaStatus

from ..models import StallFlag
from .inspect import WorkflowSnapshot

Kind = StallFlag.Kind


@dataclass
class Finding:
    kind: str
    detail: str
    workflow_status: str = ""
    task_queue: str = ""
    attempt: int | None = None


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
