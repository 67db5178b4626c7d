"""Data for the dashboard's charts: orders per hour by outcome, failure rate per step, the
age of stuck sagas and of open follow-ups, and what stuck orders hold (money, stock).

At most six grouped queries, each read from an index (on Postgres, most from the index
alone), so the dashboard stays fast at 100,000 orders (bench/page_times.py; figures in
docs/benchmarks.md):
- orders of the last 24 hours: order_created (created_at, with the saga status);
- saga events of the last 24 hours: sagaevent_created (created_at, with step and kind);
- stuck orders: the partial index order_stuck_since, their held stock: reservation_held;
- open follow-ups (a few per thousand orders): counted in one pass.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.db.models import Count, Min, Q, Sum
from django.db.models.functions import TruncHour
from django.utils import timezone

from orders.models import FollowUp, Order, Payment, Reservation, SagaEvent
from orders.status import STUCK_SAGA_STATUSES, SagaStatus, Step

WINDOW_HOURS = 24

# What became of an order, for the per-hour chart: its saga status, in fewer words.
OUTCOME_OF_SAGA_STATUS = {
    SagaStatus.COMPLETED: "completed",
    SagaStatus.NEEDS_FOLLOWUP: "followup",
    SagaStatus.PENDING: "running",
    SagaStatus.RUNNING: "running",
    SagaStatus.COMPENSATING: "running",
    SagaStatus.STUCK: "stuck",
    SagaStatus.COMPENSATION_STUCK: "stuck",
    SagaStatus.COMPENSATED: "failed",
    SagaStatus.REJECTED: "rejected",
    SagaStatus.CANCELLED: "cancelled",
}
# Stacking order, bottom up: the good news at the bottom, then what needs someone.
OUTCOMES = ("completed", "running", "followup", "stuck", "failed", "rejected", "cancelled")

# Age buckets: (upper bound, key). The last bucket has no upper bound.
AGE_BUCKETS = (
    (timedelta(minutes=5), "5m"),
    (timedelta(minutes=15), "15m"),
    (timedelta(hours=1), "1h"),
    (timedelta(hours=4), "4h"),
    (timedelta(hours=24), "24h"),
    (None, "older"),
)


@dataclass(frozen=True)
class HourCounts:
    start: datetime
    counts: dict[str, int]  # outcome -> orders placed in this hour

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def hour_floor(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def orders_per_hour(now: datetime) -> list[HourCounts]:
    """Orders placed in each of the last 24 hours (the current one last), by outcome. One query."""
    first = hour_floor(now) - timedelta(hours=WINDOW_HOURS - 1)
    rows = (
        Order.objects.filter(created_at__gte=first)
        .order_by()
        .annotate(hour=TruncHour("created_at"))
        .values_list("hour", "saga_status")
        # Not COUNT(id): the index order_created holds created_at and saga_status only.
        .annotate(n=Count("saga_status"))
    )
    counts: dict[datetime, dict[str, int]] = {}
    for hour, saga_status, n in rows:
        outcome = OUTCOME_OF_SAGA_STATUS.get(saga_status, "running")
        by_outcome = counts.setdefault(hour, {})
        by_outcome[outcome] = by_outcome.get(outcome, 0) + n
    hours = [first + timedelta(hours=i) for i in range(WINDOW_HOURS)]
    return [HourCounts(start=h, counts={o: counts.get(h, {}).get(o, 0) for o in OUTCOMES}) for h in hours]


@dataclass(frozen=True)
class StepFailures:
    step: str
    label: str
    attempts: int  # attempts that ended (succeeded or failed) in the window
    failures: int

    @property
    def rate(self) -> float | None:
        return self.failures / self.attempts if self.attempts else None


def step_failure_rates(now: datetime) -> list[StepFailures]:
    """Per step, of the attempts that ended in the last 24 hours, how many failed. One query.

    An attempt ends with a succeeded or a failed event; a failed compensation counts
    against its step too (it is that step's outside service failing)."""
    rows = (
        SagaEvent.objects.filter(created_at__gte=now - timedelta(hours=WINDOW_HOURS),
                                 kind__in=[SagaEvent.Kind.SUCCEEDED, SagaEvent.Kind.FAILED])
        .exclude(step="")
        .order_by()
        .values_list("step")
        # Counting kind (never null), not the id: the index holds step and kind, so Postgres
        # answers from the index alone.
        .annotate(attempts=Count("kind"), failures=Count("kind", filter=Q(kind=SagaEvent.Kind.FAILED)))
    )
    by_step = {step: (attempts, failures) for step, attempts, failures in rows}
    return [StepFailures(value, label, *by_step.get(value, (0, 0))) for value, label in Step.choices]


@dataclass(frozen=True)
class AgeDistribution:
    counts: dict[str, int]  # bucket key -> how many
    oldest_since: datetime | None
    now: datetime

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def oldest_age(self) -> timedelta | None:
        return self.now - self.oldest_since if self.oldest_since else None


def _age_aggregates(field: str, now: datetime, *, counted: str = "id") -> dict:
    # Cumulative counts younger than each bound; the buckets are their differences.
    # `counted` is a column that is never null, chosen so an index can answer alone.
    aggregates = {f"younger_{key}": Count(counted, filter=Q(**{f"{field}__gt": now - bound}))
                  for bound, key in AGE_BUCKETS if bound is not None}
    return {**aggregates, "n": Count(counted), "oldest": Min(field)}


def _age_buckets(row: dict) -> dict[str, int]:
    counts, below = {}, 0
    for bound, key in AGE_BUCKETS:
        cumulative = row[f"younger_{key}"] if bound is not None else row["n"]
        counts[key] = cumulative - below
        below = cumulative
    return counts


@dataclass(frozen=True)
class StuckAtStep:
    step: str
    label: str
    orders: int


@dataclass(frozen=True)
class StepHoldings:
    """What the orders stuck at one step hold: money charged and not refunded, per
    currency, and stock reserved for them (held from other customers, not yet sold)."""

    step: str
    label: str
    money: dict[str, Decimal]
    units_reserved: int


@dataclass(frozen=True)
class StuckOrders:
    ages: AgeDistribution
    by_step: list[StuckAtStep]
    holdings: list[StepHoldings]


# A saga stuck going forward after the charge has charged the order's total, and refunded
# nothing (refunds are compensations): the order row says what it holds.
CHARGED_BEFORE = [Step.CONFIRM, Step.SHIP, Step.NOTIFY]


def stuck_orders_summary(now: datetime) -> StuckOrders:
    """Stuck sagas: how long they have waited for an operator (since stuck_since) in age
    buckets, how many are stuck at each step, and the money and stock they hold. Three
    queries at most: one when no saga is stuck, two when none is stuck compensating.

    - ages, counts and the money of sagas stuck going forward: one query over the partial
      index order_stuck_since alone (it holds the step, currency and total);
    - money of sagas stuck compensating (partly refunded): their payments, from the ledger;
    - stock: their reservations still held, through the partial index reservation_held.
    Joining every stuck order to the whole payment and reservation ledgers was planned as a
    scan of both (30 and 60 ms at 100,000 orders with 3% stuck, under load).
    """
    forward_charged = Q(saga_status=SagaStatus.STUCK, current_step__in=CHARGED_BEFORE)
    rows = (
        Order.objects.filter(saga_status__in=STUCK_SAGA_STATUSES)
        .order_by()
        .values("current_step", "currency", "saga_status")
        .annotate(**_age_aggregates("stuck_since", now, counted="current_step"),
                  charged=Sum("total", filter=forward_charged))
    )
    counts = {key: 0 for _, key in AGE_BUCKETS}
    oldest = None
    by_step: dict[str, int] = {}
    money: dict[str, dict[str, Decimal]] = {}
    statuses: set[str] = set()
    for row in rows:
        statuses.add(row["saga_status"])
        for key, n in _age_buckets(row).items():
            counts[key] += n
        step = row["current_step"]
        by_step[step] = by_step.get(step, 0) + row["n"]
        if row["oldest"] is not None and (oldest is None or row["oldest"] < oldest):
            oldest = row["oldest"]
        if row["charged"]:
            _add(money.setdefault(step, {}), row["currency"], row["charged"])
    if SagaStatus.COMPENSATION_STUCK in statuses:
        compensating = (
            Payment.objects.filter(order__saga_status=SagaStatus.COMPENSATION_STUCK)
            .order_by()
            .values_list("order__current_step", "currency")
            .annotate(charged=Sum("amount", filter=Q(kind=Payment.Kind.CHARGE)),
                      refunded=Sum("amount", filter=Q(kind=Payment.Kind.REFUND)))
        )
        for step, currency, charged, refunded in compensating:
            _add(money.setdefault(step, {}), currency, (charged or Decimal(0)) - (refunded or Decimal(0)))
    reserved: dict[str, int] = {}
    if statuses:
        reserved = dict(
            Reservation.objects.filter(state=Reservation.State.HELD, order__saga_status__in=STUCK_SAGA_STATUSES)
            .order_by()
            .values_list("order__current_step")
            .annotate(units=Sum("quantity"))
        )
    holdings = []
    for value, label in Step.choices:
        held = {currency: amount for currency, amount in money.get(value, {}).items() if amount}
        if held or reserved.get(value):
            holdings.append(StepHoldings(value, label, held, reserved.get(value) or 0))
    return StuckOrders(
        ages=AgeDistribution(counts=counts, oldest_since=oldest, now=now),
        by_step=[StuckAtStep(value, label, by_step[value]) for value, label in Step.choices if by_step.get(value)],
        holdings=holdings,
    )


def _add(amounts: dict[str, Decimal], currency: str, amount: Decimal) -> None:
    amounts[currency] = amounts.get(currency, Decimal(0)) + amount


def followup_ages(now: datetime) -> AgeDistribution:
    """How long open follow-ups have waited (since they were opened), in age buckets. One query."""
    row = FollowUp.objects.filter(state=FollowUp.State.OPEN).aggregate(**_age_aggregates("created_at", now))
    return AgeDistribution(counts=_age_buckets(row), oldest_since=row["oldest"], now=now)


@dataclass(frozen=True)
class DashboardCharts:
    taken_at: datetime
    per_hour: list[HourCounts]
    failure_rates: list[StepFailures]
    stuck: StuckOrders
    followups: AgeDistribution


def dashboard_charts(now: datetime | None = None) -> DashboardCharts:
    """Everything the dashboard's charts show. Six queries at most: four when no saga is
    stuck, five when none is stuck compensating."""
    now = now or timezone.now()
    return DashboardCharts(
        taken_at=now,
        per_hour=orders_per_hour(now),
        failure_rates=step_failure_rates(now),
        stuck=stuck_orders_summary(now),
        followups=followup_ages(now),
    )
