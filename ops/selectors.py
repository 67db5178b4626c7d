"""Reads for the operations pages: dashboard counts, recent activity, stuck and follow-up
queues, the audit log. Each returns what its page shows, in a fixed number of queries
however many rows there are.
"""

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.db.models import BooleanField, Case, Count, IntegerField, OuterRef, Q, QuerySet, Subquery, Value, When
from django.utils import timezone

from orders.circuit_breaker import BreakerState, breaker_states
from orders.models import FollowUp, OperatorAction, Order, SagaEvent
from orders.selectors.preview import oldest_stuck_since, rollback_previews
from orders.status import STUCK_SAGA_STATUSES, OrderStatus, SagaStatus, Step

from .dates import day_start

RECENT_ACTIVITY_LIMIT = 20
RESOLVED_RECENTLY_DAYS = 7
FOLLOWUP_SETTLE_SECONDS = 60


@dataclass(frozen=True)
class StatusCount:
    value: str
    label: str
    count: int


@dataclass(frozen=True)
class DashboardCounts:
    order_statuses: list[StatusCount]
    saga_statuses: list[StatusCount]
    orders_total: int
    stuck_total: int
    followups_open: int


def dashboard_counts() -> DashboardCounts:
    """Orders per status and per saga status, stuck and open follow-up totals. Two queries.

    Both breakdowns come from one GROUP BY over (status, saga_status): the cost of this
    query is one pass over the orders table, so two separate GROUP BYs would cost twice
    that (measured at 100,000 orders on Postgres: docs/benchmarks.md).
    """
    by_status: dict[str, int] = {}
    by_saga: dict[str, int] = {}
    pairs = Order.objects.order_by().values_list("status", "saga_status").annotate(n=Count("id"))
    for status, saga_status, n in pairs:
        by_status[status] = by_status.get(status, 0) + n
        by_saga[saga_status] = by_saga.get(saga_status, 0) + n
    followups_open = FollowUp.objects.filter(state=FollowUp.State.OPEN).count()
    return DashboardCounts(
        order_statuses=[StatusCount(v, label, by_status.get(v, 0)) for v, label in OrderStatus.choices],
        saga_statuses=[StatusCount(v, label, by_saga.get(v, 0)) for v, label in SagaStatus.choices],
        orders_total=sum(by_status.values()),
        stuck_total=sum(by_saga.get(s, 0) for s in STUCK_SAGA_STATUSES),
        followups_open=followups_open,
    )


def recent_saga_events(limit: int = RECENT_ACTIVITY_LIMIT) -> list[SagaEvent]:
    """The latest saga events across all orders, newest first, with their order's number.
    A step starting with nothing to say is left out: it is most rows and no news."""
    return list(
        SagaEvent.objects.exclude(kind=SagaEvent.Kind.STARTED, detail="").select_related("order")
        .only("id", "step", "kind", "detail", "attempt", "created_at", "order__id", "order__number")
        .order_by("-id")[:limit]
    )


def service_outages() -> list[BreakerState]:
    """The outside services whose circuit breaker is open (or probing): down, with the sagas
    waiting on them. Read from Redis, where the breakers live; no database query."""
    return [state for state in breaker_states() if state.is_open]


@dataclass(frozen=True)
class DashboardSnapshot:
    counts: DashboardCounts
    recent_events: list[SagaEvent]
    taken_at: datetime


def dashboard_snapshot() -> DashboardSnapshot:
    """The dashboard's counts and recent activity. Three queries. (The outage banner is
    service_outages: it changes without a database write, so it is never cached with these;
    ops.dashboard.)"""
    return DashboardSnapshot(counts=dashboard_counts(), recent_events=recent_saga_events(), taken_at=timezone.now())


# --- stuck sagas ---------------------------------------------------------------------


def stuck_orders(*, step: str = "") -> QuerySet[Order]:
    """Stuck orders, longest stuck first, each with `failed_attempts` at its current step.

    failed_attempts counts the step's failed events (over every round, including after an
    operator retry) in a correlated subquery: one query per page, read through the
    (order, id) index of the events of the page's orders only.
    """
    failed_attempts = (
        SagaEvent.objects.filter(order=OuterRef("pk"), step=OuterRef("current_step"), kind=SagaEvent.Kind.FAILED)
        .order_by()
        .values("order")
        .annotate(n=Count("id"))
        .values("n")
    )
    orders = (
        Order.objects.filter(saga_status__in=STUCK_SAGA_STATUSES)
        .only(
            "id", "number", "customer_name", "customer_email", "current_step", "last_error", "stuck_since",
            "saga_status", "total", "currency",
        )
        .annotate(failed_attempts=Subquery(failed_attempts, output_field=IntegerField()))
        .order_by("stuck_since", "id")
    )
    if step:
        orders = orders.filter(current_step=step)
    return orders


def stuck_holdings_attach(orders: list[Order]) -> list[Order]:
    """Each stuck order of a page with `rollback`: the money charged and the stock it holds
    while it waits, which is what compensating it would undo (orders.selectors.preview).
    Four queries per page."""
    previews = rollback_previews([order.pk for order in orders])
    for order in orders:
        order.rollback = previews.get(order.pk)
    return orders


def stuck_oldest_since():
    """When the saga that has waited longest got stuck (None: none is stuck)."""
    return oldest_stuck_since(STUCK_SAGA_STATUSES)


def stuck_counts_by_step() -> list[StatusCount]:
    """How many sagas are stuck at each step (steps with none left out). One query."""
    counts = dict(
        Order.objects.filter(saga_status__in=STUCK_SAGA_STATUSES).order_by().values_list("current_step").annotate(n=Count("id"))
    )
    return [StatusCount(v, label, counts[v]) for v, label in Step.choices if counts.get(v)]


# --- follow-ups ------------------------------------------------------------------------

FOLLOWUP_OPEN = "open"
FOLLOWUP_RESOLVED_RECENTLY = "resolved"
FOLLOWUP_VIEWS = {FOLLOWUP_OPEN: "Open", FOLLOWUP_RESOLVED_RECENTLY: f"Resolved in the last {RESOLVED_RECENTLY_DAYS} days"}


def _with_last_action(followups: QuerySet[FollowUp]) -> QuerySet[FollowUp]:
    # The latest resend/resolve asked for this order, so a row can say "resolve sent by ana"
    # while the saga has not acted yet. Two correlated subqueries on the page's rows only.
    last = OperatorAction.objects.filter(
        order=OuterRef("order_id"), action__in=[OperatorAction.Action.RESEND, OperatorAction.Action.RESOLVED]
    ).order_by("-created_at", "-id")
    return followups.annotate(
        last_action=Subquery(last.values("action")[:1]),
        last_action_outcome=Subquery(last.values("outcome")[:1]),
        last_action_at=Subquery(last.values("created_at")[:1]),
        # Why staff closed it, in their words (the resolve's reason), for the resolved badge.
        last_action_reason=Subquery(last.values("reason")[:1]),
    ).annotate(
        # Asked for, but the saga has not answered yet: the row offers no second click.
        last_action_pending=Case(
            When(last_action_outcome__in=[OperatorAction.Outcome.REQUESTED, OperatorAction.Outcome.SENT], then=Value(True)),
            default=Value(False),
            output_field=BooleanField(),
        ),
        # Applied in the last minute: the saga closes the follow-up just after it applies the
        # command, so the row keeps asking until it sees the close (and the header recounts).
        last_action_settling=Case(
            When(last_action_outcome=OperatorAction.Outcome.APPLIED,
                 last_action_at__gte=timezone.now() - timedelta(seconds=FOLLOWUP_SETTLE_SECONDS), then=Value(True)),
            default=Value(False),
            output_field=BooleanField(),
        ),
    )


def followup_queue(*, view: str = FOLLOWUP_OPEN) -> QuerySet[FollowUp]:
    """Open follow-ups oldest first, or those resolved recently, newest first."""
    followups = FollowUp.objects.select_related("order", "claimed_by")
    if view == FOLLOWUP_RESOLVED_RECENTLY:
        since = timezone.now() - timedelta(days=RESOLVED_RECENTLY_DAYS)
        followups = followups.filter(state=FollowUp.State.RESOLVED, resolved_at__gte=since).order_by("-resolved_at", "-id")
    else:
        followups = followups.filter(state=FollowUp.State.OPEN).order_by("created_at", "id")
    return _with_last_action(followups)


def followup_get(followup_id: int) -> FollowUp:
    """One follow-up as its queue row shows it. Raises FollowUp.DoesNotExist."""
    return _with_last_action(FollowUp.objects.select_related("order", "claimed_by")).get(pk=followup_id)


# --- audit log ----------------------------------------------------------------------------


@dataclass
class AuditFilters:
    action: str = ""
    outcome: str = ""
    actor: str = ""
    order_number: str = ""
    date_from: date | None = None
    date_to: date | None = None


def order_number_normalize(text: str) -> str:
    """'SO-000042', 'so-42' and '42' all name order SO-000042."""
    text = text.strip().upper()
    digits = text[3:] if text.startswith("SO-") else text
    if digits.isdigit():
        return f"SO-{int(digits):06d}"
    return text


def operator_actions(filters: AuditFilters) -> QuerySet[OperatorAction]:
    """The audit log, newest first, narrowed by the filters that are set."""
    actions = OperatorAction.objects.select_related("order", "actor").only(
        "id", "action", "reason", "outcome", "outcome_detail", "created_at",
        "order__id", "order__number", "actor__id", "actor__username",
    )
    conditions = Q()
    if filters.action:
        conditions &= Q(action=filters.action)
    if filters.outcome:
        conditions &= Q(outcome=filters.outcome)
    if filters.actor:
        conditions &= Q(actor__username__iexact=filters.actor.strip())
    if filters.order_number:
        conditions &= Q(order__number=order_number_normalize(filters.order_number))
    # Ranges on the column itself (not created_at__date) so its index serves them.
    if filters.date_from:
        conditions &= Q(created_at__gte=day_start(filters.date_from))
    if filters.date_to:
        conditions &= Q(created_at__lt=day_start(filters.date_to + timedelta(days=1)))
    return actions.filter(conditions).order_by("-created_at", "-id")
