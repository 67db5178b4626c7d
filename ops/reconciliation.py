"""Reconciliation runs: queue one, execute it, store and show what disagrees.

What is checked, and how, is ops.reconciliation_checks; this module is the run's
bookkeeping around it (one run executes at a time: ops.tasks holds a lock) and the
selectors of the reconciliation pages.
"""

import logging
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from orders.temporal_client import workflow_ui_url

from .jobs import RECONCILIATION_RUN, job_enqueue_on_commit
from .models import Discrepancy, ReconciliationRun
from .permissions import OPERATE_SAGAS
from .reconciliation_checks import Findings, TemporalCheckFailed, invariants_check, running_saga_workflows

logger = logging.getLogger(__name__)

Kind = Discrepancy.Kind
State = ReconciliationRun.State


# --- services ------------------------------------------------------------------------------


def reconciliation_run_create(*, trigger: str, requested_by=None) -> ReconciliationRun:
    """A run waiting to be executed (reconciliation_run_execute); nothing is queued."""
    return ReconciliationRun.objects.create(trigger=trigger, requested_by=requested_by)


def reconciliation_run_queue(*, trigger: str, requested_by=None) -> ReconciliationRun:
    """Create a run and queue its execution in Celery once the row is committed."""
    with transaction.atomic():
        run = reconciliation_run_create(trigger=trigger, requested_by=requested_by)
        job_enqueue_on_commit(RECONCILIATION_RUN, run.pk)
    return run


def reconciliation_run_request(*, actor) -> ReconciliationRun:
    """Staff asked for a run now: queue it.

    Raises PermissionDenied for staff who may not operate sagas.
    """
    if actor is None or not actor.has_perm(OPERATE_SAGAS):
        raise PermissionDenied("You are not allowed to run reconciliation.")
    return reconciliation_run_queue(trigger=ReconciliationRun.Trigger.MANUAL, requested_by=actor)


def reconciliation_run_execute(*, run_id: int) -> ReconciliationRun:
    """Run the checks and store the findings. Idempotent: a finished run is left as it is,
    and a run interrupted midway (a worker lost) starts over with its findings cleared.

    Locks: the run row, while claiming it.
    """
    with transaction.atomic():
        run = ReconciliationRun.objects.select_for_update().get(pk=run_id)
        if run.state in (State.FINISHED, State.FAILED):
            return run
        run.discrepancies.all().delete()
        run.state, run.started_at, run.error, run.workflow_check_error = State.RUNNING, timezone.now(), "", ""
        run.save(update_fields=["state", "started_at", "error", "workflow_check_error"])

    found = Findings(run, settings.RECONCILIATION_MAX_PER_KIND)
    try:
        try:
            running = running_saga_workflows()
        except TemporalCheckFailed as exc:
            running = None
            run.workflow_check_error = str(exc)[:2000]
        checked = invariants_check(found, running=running, now=timezone.now())
        run.products_checked, run.orders_checked = checked.products, checked.orders
        if checked.workflows is not None:
            run.workflows_checked = checked.workflows
        Discrepancy.objects.bulk_create(found.rows, batch_size=500)
    except Exception as exc:
        logger.exception("reconciliation run %s failed", run_id)
        run.state, run.error, run.finished_at = State.FAILED, f"{type(exc).__name__}: {exc}"[:2000], timezone.now()
        run.save()
        raise
    run.state, run.finished_at = State.FINISHED, timezone.now()
    run.discrepancy_count = sum(found.counts.values())
    run.overflow = found.overflow
    run.save()
    return run


# --- selectors -----------------------------------------------------------------------------


def reconciliation_runs(*, limit: int = 30) -> list[ReconciliationRun]:
    return list(ReconciliationRun.objects.select_related("requested_by").order_by("-created_at", "-id")[:limit])


@dataclass
class DiscrepancyGroup:
    kind: str
    label: str
    rows: list[Discrepancy]
    not_shown: int


def reconciliation_report(*, run_id: int) -> tuple[ReconciliationRun, list[DiscrepancyGroup]]:
    """A run with its findings grouped by kind: two queries, whatever their number."""
    run = ReconciliationRun.objects.select_related("requested_by").get(pk=run_id)
    groups: dict[str, DiscrepancyGroup] = {}
    for row in run.discrepancies.select_related("order", "product").order_by("kind", "id"):
        row.temporal_url = workflow_ui_url(row.workflow_id)
        group = groups.get(row.kind)
        if group is None:
            group = groups[row.kind] = DiscrepancyGroup(row.kind, Kind(row.kind).label, [], run.overflow.get(row.kind, 0))
        group.rows.append(row)
    ordered = [groups[k] for k in Kind.values if k in groups]
    return run, ordered
