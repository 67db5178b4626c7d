"""Writes of ops.stalls: the sweep, opening and clearing stall flags, and telling the pages.

Broadcasts go out after commit (transaction.on_commit), so a page never shows a flag that
was rolled back.
"""

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from orders.broadcast import publish
from orders.models import Order
from orders.services.saga import saga_start
from orders.status import TERMINAL_SAGA_STATUSES, SagaStatus

from ..models import StallFlag, SweepRun
from . import inspect
from .classify import Finding, Kind, stall_classify
from .inspect import Inspection, TemporalUnavailable, WorkflowSnapshot
from .selectors import ACTIVE_SAGA_STATUSES, flags_moved_or_finished, stall_flags_card_context, stalled_orders

# Channel-layer group of pages that show the flags (see ops.consumers_background).
FLAGS_GROUP = "ops-flags"


def stall_flags_clear(*, now: datetime) -> int:
    """Clear open flags whose saga moved again or finished. Returns how many."""
    moved = list(
        StallFlag.objects.filter(cleared_at=None).filter(flags_moved_or_finished())
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
            inspection = inspect.workflows_inspect(workflow_ids) if workflow_ids else Inspection({}, {}, {})
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
    if saga_start(order_id=order.pk):
        detail = "The saga had never started (no workflow existed); the sweeper started it again."
        return Finding(Kind.WORKFLOW_MISSING, detail, "not found"), True
    detail = "The saga was never started and starting it again failed; see the order's events."
    return Finding(Kind.WORKFLOW_MISSING, detail, "not found"), False
