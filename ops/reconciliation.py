"""Reconciliation: check the invariants of shared/DESIGN.md across all orders, store what disagrees.

Checks (each a Discrepancy kind):
- stock: per product, the counters agree with each other and with the StockMovement ledger;
- money: charged minus refunded per order fits its status (total when completed, zero when
  failed, cancelled or rejected, between the two while the saga runs);
- idempotency: no effect recorded twice (two charges or refunds for one order, two stock
  moves of one kind for one order and product, a key derived from another order's workflow);
- finished sagas: status, 'finished' event, events and ledger rows tell the same story;
- Temporal: every running workflow on the saga queue belongs to an open order, and every
  open order has a running workflow.

The database checks read one snapshot (REPEATABLE READ on Postgres), so a saga writing
meanwhile cannot make the counters and the ledger look out of step. Aggregates are pushed
to the database; the per-order loop works on small tuples, streaming.
"""

import contextlib
import logging
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import connection, transaction
from django.db.models import Count, F, Q, Sum, Value
from django.db.models.functions import Concat
from django.utils import timezone

from orders.models import Order, Payment, Product, Reservation, SagaEvent, StockMovement
from orders.status import (
    ORDER_STATUS_AFTER_SAGA,
    TERMINAL_SAGA_STATUSES,
    OrderStatus,
    SagaStatus,
)
from orders.temporal_client import run_with_client, workflow_ui_url

from .models import Discrepancy, ReconciliationRun
from .permissions import OPERATE_SAGAS

logger = logging.getLogger(__name__)

Kind = Discrepancy.Kind
State = ReconciliationRun.State

COMPLETED_STATUSES = {OrderStatus.COMPLETED, OrderStatus.DELIVERED}
UNDONE_STATUSES = {OrderStatus.FAILED, OrderStatus.CANCELLED, OrderStatus.REJECTED}
# `order-<pk>-<random>` (and its tracker `delivery-<pk>-<random>`); orders placed before
# the random part have `order-<pk>`.
WORKFLOW_ID = re.compile(r"^(order|delivery)-(\d+)(?:-[A-Za-z0-9]+)?$")


class TemporalCheckFailed(Exception):
    pass


class _Findings:
    """Collects discrepancies, storing at most RECONCILIATION_MAX_PER_KIND of each kind."""

    def __init__(self, run: ReconciliationRun, max_per_kind: int):
        self.run = run
        self.max_per_kind = max_per_kind
        self.counts: Counter = Counter()
        self.rows: list[Discrepancy] = []

    def add(self, kind: str, detail: str, *, order_id=None, product_id=None, workflow_id: str = "") -> None:
        self.counts[kind] += 1
        if self.counts[kind] <= self.max_per_kind:
            self.rows.append(Discrepancy(run=self.run, kind=kind, detail=detail[:2000], order_id=order_id,
                                         product_id=product_id, workflow_id=workflow_id[:200]))

    @property
    def overflow(self) -> dict[str, int]:
        return {k: n - self.max_per_kind for k, n in self.counts.items() if n > self.max_per_kind}


@contextlib.contextmanager
def _snapshot():
    """One consistent view of the database for all checks (Postgres: repeatable read).

    SQLite's IMMEDIATE transactions would lock out the sagas' writers for the whole run, so
    there the checks read in autocommit; a saga writing meanwhile may then show up once as a
    false discrepancy, which the next run does not repeat.
    """
    if connection.vendor != "postgresql":
        yield
        return
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield


# --- the checks ----------------------------------------------------------------------------


def _check_stock(found: _Findings) -> int:
    moved: dict[int, Counter] = defaultdict(Counter)
    for product_id, kind, quantity in (
        StockMovement.objects.order_by().values_list("product_id", "kind").annotate(q=Sum("quantity"))
    ):
        moved[product_id][kind] = quantity
    checked = 0
    for p in Product.objects.order_by("pk").values_list("pk", "sku", "on_hand", "reserved", "sold", "received").iterator():
        pk, sku, on_hand, reserved, sold, received = p
        checked += 1
        k = moved[pk]
        problems = []
        if on_hand + reserved + sold != received:
            problems.append(f"on hand {on_hand} + reserved {reserved} + sold {sold} = {on_hand + reserved + sold}, "
                            f"but {received} were received")
        ledger_reserved = k["reserve"] - k["release"] - k["confirm"]
        if reserved != ledger_reserved:
            problems.append(f"reserved is {reserved} but the ledger holds {ledger_reserved}")
        ledger_sold = k["confirm"] - k["restock"]
        if sold != ledger_sold:
            problems.append(f"sold is {sold} but the ledger sold {ledger_sold}")
        if problems:
            found.add(Kind.STOCK_DRIFT, f"{sku}: " + "; ".join(problems), product_id=pk)
    return checked


def _payments_by_order() -> dict[int, dict[str, tuple[Decimal, int]]]:
    payments: dict[int, dict[str, tuple[Decimal, int]]] = defaultdict(dict)
    for order_id, kind, amount, n in (
        Payment.objects.order_by().values_list("order_id", "kind").annotate(s=Sum("amount"), n=Count("id"))
    ):
        payments[order_id][kind] = (amount or Decimal(0), n)
    return payments


def _check_money(found: _Findings, payments) -> int:
    checked = 0
    zero = (Decimal(0), 0)
    for pk, number, status, total, currency in (
        Order.objects.order_by("pk").values_list("pk", "number", "status", "total", "currency").iterator(chunk_size=5000)
    ):
        checked += 1
        paid = payments.get(pk)
        charged, charges = paid.get(Payment.Kind.CHARGE, zero) if paid else zero
        refunded, refunds = paid.get(Payment.Kind.REFUND, zero) if paid else zero
        net = charged - refunded
        if status in COMPLETED_STATUSES and net != total:
            found.add(Kind.MONEY_MISMATCH, f"{number} is {status} with total {total} {currency}, but charged "
                      f"{charged} minus refunded {refunded} is {net}", order_id=pk)
        elif status in UNDONE_STATUSES and net != 0:
            found.add(Kind.MONEY_MISMATCH, f"{number} is {status}, but charged {charged} minus refunded "
                      f"{refunded} leaves {net} {currency} with us", order_id=pk)
        elif status not in COMPLETED_STATUSES | UNDONE_STATUSES and not (0 <= net <= total):
            found.add(Kind.MONEY_MISMATCH, f"{number} is {status} with total {total}, but its net payments are {net}",
                      order_id=pk)
        if charges > 1 or refunds > 1:
            found.add(Kind.DUPLICATE_EFFECT, f"{number} has {charges} charges and {refunds} refunds: "
                      "each must happen at most once", order_id=pk)
    return checked


def _check_keys(found: _Findings) -> None:
    """Ledger rows under a key that is not their own order's, and stock moved twice."""
    foreign = Q(order__workflow_id=None) | ~Q(idempotency_key__startswith=Concat(F("order__workflow_id"), Value(":")))
    for model, label in ((Payment, "payment"), (StockMovement, "stock movement")):
        for pk, order_id, number, key in (
            model.objects.filter(foreign).order_by("pk").values_list("pk", "order_id", "order__number", "idempotency_key")
        ):
            found.add(Kind.DUPLICATE_EFFECT, f"{label} #{pk} of {number} is keyed {key!r}, which is not derived "
                      "from its own order's workflow: a key used for another order", order_id=order_id)
    repeated = (
        StockMovement.objects.order_by().values_list("order_id", "order__number", "product__sku", "kind")
        .annotate(n=Count("id")).filter(n__gt=1)
    )
    for order_id, number, sku, kind, n in repeated:
        found.add(Kind.DUPLICATE_EFFECT, f"{number}: stock of {sku} was {StockMovement.Kind(kind).label} {n} times",
                  order_id=order_id)


# (step, kind) pairs of events that the ledger must agree with.
LEDGER_EVENTS = [
    ("", SagaEvent.Kind.FINISHED), ("charge", SagaEvent.Kind.SUCCEEDED), ("charge", SagaEvent.Kind.COMPENSATED),
    ("reserve", SagaEvent.Kind.SUCCEEDED), ("reserve", SagaEvent.Kind.COMPENSATED),
    ("confirm", SagaEvent.Kind.SUCCEEDED), ("confirm", SagaEvent.Kind.COMPENSATED),
]


def _check_finished_sagas(found: _Findings, payments) -> None:
    terminal = Q(order__saga_status__in=TERMINAL_SAGA_STATUSES)
    events: dict[int, Counter] = defaultdict(Counter)
    pairs = Q()
    for step, kind in LEDGER_EVENTS:
        pairs |= Q(step=step, kind=kind)
    for order_id, step, kind, n in (
        SagaEvent.objects.filter(terminal & pairs).order_by().values_list("order_id", "step", "kind").annotate(n=Count("id"))
    ):
        events[order_id][(step, kind)] = n
    moves: dict[int, Counter] = defaultdict(Counter)
    for order_id, kind, n in StockMovement.objects.filter(terminal).order_by().values_list("order_id", "kind").annotate(n=Count("id")):
        moves[order_id][kind] = n
    holds: dict[int, Counter] = defaultdict(Counter)
    for order_id, state, n in Reservation.objects.filter(terminal).order_by().values_list("order_id", "state").annotate(n=Count("id")):
        holds[order_id][state] = n

    for pk, number, status, saga_status in (
        Order.objects.filter(saga_status__in=TERMINAL_SAGA_STATUSES).order_by("pk")
        .values_list("pk", "number", "status", "saga_status").iterator(chunk_size=5000)
    ):
        e, m, r = events[pk], moves[pk], holds[pk]
        paid = payments.get(pk, {})
        charges = paid.get(Payment.Kind.CHARGE, (0, 0))[1]
        refunds = paid.get(Payment.Kind.REFUND, (0, 0))[1]
        problems = []
        expected = ORDER_STATUS_AFTER_SAGA[saga_status]
        allowed = {expected, OrderStatus.DELIVERED} if expected == OrderStatus.COMPLETED else {expected}
        if status not in allowed:
            problems.append(f"the saga {SagaStatus(saga_status).label} but the order is {status}")
        if e[("", "finished")] != 1:
            problems.append(f"{e[('', 'finished')]} 'saga finished' events instead of one")
        if charges != e[("charge", "succeeded")]:
            problems.append(f"{charges} charge(s) in the ledger but {e[('charge', 'succeeded')]} 'charge succeeded' event(s)")
        if refunds and not e[("charge", "compensated")]:
            problems.append("refunded without a 'charge compensated' event")
        if bool(m["reserve"]) != bool(e[("reserve", "succeeded")]):
            problems.append("stock reservation and its 'reserve succeeded' event disagree")
        if m["release"] and not e[("reserve", "compensated")]:
            problems.append("stock released without a 'reserve compensated' event")
        if m["confirm"] and not e[("confirm", "succeeded")]:
            problems.append("stock sold without a 'confirm succeeded' event")
        if m["restock"] and not e[("confirm", "compensated")]:
            problems.append("stock restocked without a 'confirm compensated' event")
        if status in COMPLETED_STATUSES:
            if not r or set(r) != {Reservation.State.CONFIRMED}:
                problems.append(f"completed, but its reservations are {_states(r) or 'missing'} instead of all sold")
        elif r[Reservation.State.HELD] or r[Reservation.State.CONFIRMED]:
            problems.append(f"{status}, but it still holds stock ({_states(r)})")
        if problems:
            found.add(Kind.SAGA_INCONSISTENT, f"{number}: " + "; ".join(problems), order_id=pk)


def _states(counter: Counter) -> str:
    return ", ".join(f"{n} {state}" for state, n in sorted(counter.items()) if n)


def running_saga_workflows() -> dict[str, str]:
    """Running workflows on the saga's task queue (Temporal visibility): id -> workflow type."""
    query = f'ExecutionStatus="Running" AND TaskQueue="{settings.SAGA_TASK_QUEUE}"'

    async def listing(client) -> dict[str, str]:
        return {wf.id: wf.workflow_type async for wf in client.list_workflows(query, page_size=1000)}

    try:
        return run_with_client(listing, timeout=600)
    except Exception as exc:
        raise TemporalCheckFailed(f"Could not list workflows in Temporal: {exc}") from exc


def _check_workflows(found: _Findings, running: dict[str, str], now: datetime) -> int:
    """Open workflows against open orders. Orders that moved within the grace period are
    skipped: visibility lags a little behind the workflows themselves."""
    settled = now - timedelta(seconds=settings.RECONCILIATION_GRACE_SECONDS)
    quiet = Q(last_event_at__lt=settled) | Q(last_event_at=None, created_at__lt=settled)

    by_order: dict[int, list[str]] = defaultdict(list)
    for workflow_id, workflow_type in running.items():
        match = WORKFLOW_ID.match(workflow_id)
        if not match:
            found.add(Kind.ORPHAN_WORKFLOW, f"Workflow {workflow_id} ({workflow_type}) runs on the saga queue but "
                      "belongs to no order", workflow_id=workflow_id)
            continue
        by_order[int(match.group(2))].append(workflow_id)
    ids = sorted(by_order)
    known: dict[int, tuple] = {}
    for start in range(0, len(ids), 2000):
        for pk, number, saga_status, last_event_at, created_at in (
            Order.objects.filter(pk__in=ids[start:start + 2000])
            .values_list("pk", "number", "saga_status", "last_event_at", "created_at")
        ):
            known[pk] = (number, saga_status, (last_event_at or created_at) < settled)
    for order_id, workflow_ids in by_order.items():
        for workflow_id in workflow_ids:
            if order_id not in known:
                found.add(Kind.ORPHAN_WORKFLOW, f"Workflow {workflow_id} is running but order #{order_id} does not exist",
                          workflow_id=workflow_id)
                continue
            number, saga_status, settled_order = known[order_id]
            if workflow_id.startswith("order-") and saga_status in TERMINAL_SAGA_STATUSES and settled_order:
                found.add(Kind.ORPHAN_WORKFLOW, f"Workflow {workflow_id} is still running although {number}'s saga "
                          f"{SagaStatus(saga_status).label}", order_id=order_id, workflow_id=workflow_id)

    open_orders = (
        Order.objects.exclude(saga_status__in=TERMINAL_SAGA_STATUSES).filter(quiet)
        .order_by("pk").values_list("pk", "number", "saga_status", "workflow_id")
    )
    checked = 0
    for pk, number, saga_status, workflow_id in open_orders.iterator(chunk_size=5000):
        checked += 1
        if not workflow_id or workflow_id not in running:
            found.add(Kind.MISSING_WORKFLOW, f"{number} is {SagaStatus(saga_status).label}, but its workflow "
                      f"{workflow_id or '(none)'} is not running: terminated, closed, or never started",
                      order_id=pk, workflow_id=workflow_id or "")
    return checked


# --- services ------------------------------------------------------------------------------


def reconciliation_run_create(*, trigger: str, requested_by=None) -> ReconciliationRun:
    return ReconciliationRun.objects.create(trigger=trigger, requested_by=requested_by)


def reconciliation_run_request(*, actor) -> ReconciliationRun:
    """Staff asked for a run now: queue it for Celery once the row is committed.

    Raises PermissionDenied for staff who may not operate sagas.
    """
    if actor is None or not actor.has_perm(OPERATE_SAGAS):
        raise PermissionDenied("You are not allowed to run reconciliation.")
    from .tasks import reconciliation_run  # the tasks module imports this one

    with transaction.atomic():
        run = reconciliation_run_create(trigger=ReconciliationRun.Trigger.MANUAL, requested_by=actor)
        transaction.on_commit(lambda: reconciliation_run.delay(run.pk))
    return run


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

    found = _Findings(run, settings.RECONCILIATION_MAX_PER_KIND)
    try:
        try:
            running = running_saga_workflows()
        except TemporalCheckFailed as exc:
            running = None
            run.workflow_check_error = str(exc)[:2000]
        now = timezone.now()
        with _snapshot():
            run.products_checked = _check_stock(found)
            payments = _payments_by_order()
            run.orders_checked = _check_money(found, payments)
            _check_keys(found)
            _check_finished_sagas(found, payments)
            if running is not None:
                _check_workflows(found, running, now)
                run.workflows_checked = len(running)
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
