"""What needs staff now, as plain rows: one per (kind, key), found by cheap queries.

Each query reads an index: stuck sagas by (saga_status, last_event_at), open stall flags and
open follow-ups by their partial unique indexes (open rows only, however long the history),
the latest reconciliation run's findings by (run, kind, id). Healthy and finished orders are
never read.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count

from orders.models import FollowUp, Order
from orders.status import SagaStatus

from ..models import AlertIncident, Discrepancy, ReconciliationRun, StallFlag
from ..stalls.selectors import flags_moved_or_finished
from . import presenters

Kind = AlertIncident.Kind


@dataclass(frozen=True)
class Condition:
    kind: str
    key: str
    title: str
    detail: str
    url: str
    order_id: int | None = None


def stuck_sagas_query():
    return (
        Order.objects.filter(saga_status__in=[SagaStatus.STUCK, SagaStatus.COMPENSATION_STUCK])
        .only("pk", "number", "saga_status", "current_step", "last_error", "stuck_since")
        .order_by("pk")
    )


def _stuck_sagas() -> list[Condition]:
    found = []
    for order in stuck_sagas_query():
        kind = Kind.SAGA_STUCK if order.saga_status == SagaStatus.STUCK else Kind.COMPENSATION_STUCK
        found.append(Condition(
            kind=kind, key=str(order.pk), order_id=order.pk, title=presenters.stuck_title(order, kind),
            detail=order.last_error, url=presenters.order_url(order.pk),
        ))
    return found


def flagged_sagas_query():
    # The same flags the flagged-sagas card shows: a saga that moved again drops off at once.
    return (
        StallFlag.objects.filter(cleared_at=None).exclude(flags_moved_or_finished())
        .select_related("order").only("pk", "kind", "detail", "order_id", "order__number").order_by("order_id")
    )


def _flagged_sagas() -> list[Condition]:
    flags = flagged_sagas_query()
    return [
        Condition(kind=Kind.SAGA_FLAGGED, key=str(flag.order_id), order_id=flag.order_id,
                  title=presenters.flagged_title(flag), detail=flag.detail, url=presenters.order_url(flag.order_id))
        for flag in flags
    ]


def overdue_followups_query(now: datetime):
    cutoff = now - timedelta(minutes=settings.ALERTS_FOLLOWUP_AGE_MINUTES)
    return (
        FollowUp.objects.filter(state=FollowUp.State.OPEN, created_at__lte=cutoff)
        .select_related("order").only("pk", "reason", "created_at", "order_id", "order__number")
        .order_by("created_at", "pk")
    )


def _overdue_followups(now: datetime) -> list[Condition]:
    followups = overdue_followups_query(now)
    # Keyed by the follow-up: a new one for the same order later is a new incident.
    return [
        Condition(kind=Kind.FOLLOWUP_OVERDUE, key=str(f.pk), order_id=f.order_id,
                  title=presenters.followup_title(f), detail=f.reason, url=presenters.order_url(f.order_id))
        for f in followups
    ]


def latest_finished_run_query():
    return (
        ReconciliationRun.objects.filter(state=ReconciliationRun.State.FINISHED)
        .only("pk", "finished_at", "overflow").order_by("-finished_at", "-id")
    )


def _reconciliation_discrepancies() -> list[Condition]:
    # Only the latest finished run counts: a later clean run resolves what an earlier one found.
    run = latest_finished_run_query().first()
    if run is None:
        return []
    # order_by() drops the model's ordering, which would otherwise split the groups by id.
    counts = {
        row["kind"]: row["n"]
        for row in Discrepancy.objects.filter(run=run).order_by().values("kind").annotate(n=Count("id"))
    }
    found = []
    for kind in Discrepancy.Kind.values:
        total = counts.get(kind, 0) + run.overflow.get(kind, 0)
        if total:
            # Keyed by the kind of finding, so the same drift found again night after night
            # stays one incident instead of a new alert per run.
            found.append(Condition(
                kind=Kind.RECONCILIATION, key=kind, title=presenters.reconciliation_title(run, kind, total),
                detail="", url=presenters.reconciliation_url(run.pk),
            ))
    return found


def alert_conditions(*, now: datetime) -> list[Condition]:
    """Everything that needs staff now. A handful of queries, whatever the number of orders."""
    return [*_stuck_sagas(), *_flagged_sagas(), *_overdue_followups(now), *_reconciliation_discrepancies()]
