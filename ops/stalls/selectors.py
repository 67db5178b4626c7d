"""Reads of ops.stalls: the quiet sagas a sweep looks at, and the open flags the pages show."""

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db.models import F, FilteredRelation, Q

from orders.models import Order
from orders.status import SagaStatus, Step
from orders.temporal_client import workflow_ui_url

from ..models import StallFlag, SweepRun

# Sagas that should be making progress on their own. Stuck and follow-up sagas wait for
# an operator and are listed in their own queues.
ACTIVE_SAGA_STATUSES = (SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING)


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


def flags_moved_or_finished() -> Q:
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
        .exclude(flags_moved_or_finished())
        .select_related("order")
        .order_by("created_at", "id")
    )
    total = flags.count()
    rows = [_flag_row(f) for f in (flags[:limit] if limit else flags)]
    return FlagList(rows=rows, total=total)


def sweeper_last_run() -> SweepRun | None:
    return SweepRun.objects.order_by("-started_at", "-id").first()


def stall_flag_for_order(order_id: int) -> StallFlag | None:
    return StallFlag.objects.filter(order_id=order_id, cleared_at=None).exclude(flags_moved_or_finished()).first()


def stall_flags_card_context() -> dict:
    """What the flagged-sagas card shows: the first flags, their number, the last sweep."""
    last_run = sweeper_last_run()
    return {
        "flags": stall_flags_open(limit=settings.SWEEPER_DASHBOARD_FLAGS),
        "swept_at": last_run.started_at if last_run else None,
        "sweep_error": last_run.error if last_run else "",
    }
