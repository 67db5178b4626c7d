"""Reconciliation's checks: the invariants of shared/DESIGN.md across all orders.

The run around them (claiming it, storing the findings, the pages) is ops.reconciliation;
this module only reads and reports what disagrees, through a Findings collector.

Checks (each a Discrepancy kind):
- stock: per product, the counters agree with each other and with the StockMovement ledger;
- money: charged minus refunded per order fits its status (total when completed, zero when
  failed, cancelled or rejected, between the two while the saga runs);
- idempotency: no effect recorded twice (two charges or refunds for one order, two stock
  moves of one kind for one order and product, a key derived from another order's workflow);
- finished sagas: status, 'finished' event, events and ledger rows tell the same story;
- returns (ops.reconciliation_returns): each return's refund, restock and state agree with
  the ledgers and the order's money books, and none waits past its deadline;
- Temporal: every running workflow on the saga queue belongs to an open order, and every
  open order has a running workflow; no delivery tracker runs for a closed order (delivered,
  its tracking ended, or the order undone);
- the outside world's books, through the adapters (charge, refund and shipment lookups by
  key, in batches): money held at the gateway for a failed, rejected or cancelled order; a
  charge or refund at the gateway we never recorded; a key whose kind, amount or reference
  differs between our ledger and the gateway (or that the gateway never booked); parcels
  still booked at the carrier for an order that did not go through.

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
from django.db import connection, transaction
from django.db.models import Count, F, Q, Sum, Value
from django.db.models.functions import Concat

from orders.adapters import payment_gateway, shipping_carrier
from orders.models import Order, Payment, Product, Reservation, Return, SagaEvent, StockMovement
from orders.status import (
    ORDER_STATUS_AFTER_SAGA,
    TERMINAL_SAGA_STATUSES,
    OrderStatus,
    SagaStatus,
)
from orders.temporal_client import run_with_client

from .models import Discrepancy, ReconciliationRun
from .reconciliation_returns import RETURN_RESTOCK, check_returns, return_refund_keys

logger = logging.getLogger(__name__)

Kind = Discrepancy.Kind

COMPLETED_STATUSES = {OrderStatus.COMPLETED, OrderStatus.DELIVERED}
UNDONE_STATUSES = {OrderStatus.FAILED, OrderStatus.CANCELLED, OrderStatus.REJECTED}
# Orders whose delivery tracker must have ended (issue 8: no open tracker for a closed order).
CLOSED_FOR_DELIVERY = UNDONE_STATUSES | {OrderStatus.DELIVERED}
# `order-<pk>-<random>` (its tracker `delivery-<pk>-<random>`, its returns
# `return-<pk>-<random>-r<return pk>`); orders placed before the random part have `order-<pk>`.
WORKFLOW_ID = re.compile(r"^(order|delivery|return)-(\d+)(?:-[A-Za-z0-9]+)*$")


class TemporalCheckFailed(Exception):
    """Temporal could not list the running workflows: the run goes on without those checks."""


class Findings:
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


def _check_stock(found: Findings) -> int:
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
    # The order saga's own charge and refund; returns' refunds are checked against their
    # returns (ops.reconciliation_returns).
    for order_id, kind, amount, n in (
        Payment.objects.exclude(idempotency_key__in=Return.objects.values("refund_key"))
        .order_by().values_list("order_id", "kind").annotate(s=Sum("amount"), n=Count("id"))
    ):
        payments[order_id][kind] = (amount or Decimal(0), n)
    return payments


def _check_money(found: Findings, payments) -> int:
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


def _check_keys(found: Findings) -> None:
    """Ledger rows under a key that is not their own order's, and stock moved twice."""
    foreign = Q(order__workflow_id=None) | ~Q(idempotency_key__startswith=Concat(F("order__workflow_id"), Value(":")))
    for model, label in ((Payment, "payment"), (StockMovement, "stock movement")):
        for pk, order_id, number, key in (
            model.objects.filter(foreign).order_by("pk").values_list("pk", "order_id", "order__number", "idempotency_key")
        ):
            found.add(Kind.DUPLICATE_EFFECT, f"{label} #{pk} of {number} is keyed {key!r}, which is not derived "
                      "from its own order's workflow: a key used for another order", order_id=order_id)
    repeated = (
        StockMovement.objects.exclude(idempotency_key__regex=RETURN_RESTOCK).order_by().values_list("order_id", "order__number", "product__sku", "kind")
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


def _check_finished_sagas(found: Findings, payments) -> None:
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
    for order_id, kind, n in StockMovement.objects.filter(terminal).exclude(idempotency_key__regex=RETURN_RESTOCK).order_by().values_list("order_id", "kind").annotate(n=Count("id")):
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


def _check_workflows(found: Findings, running: dict[str, str], now: datetime) -> int:
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
        for pk, number, saga_status, last_event_at, created_at, status, tracking_ended_at in (
            Order.objects.filter(pk__in=ids[start:start + 2000])
            .values_list("pk", "number", "saga_status", "last_event_at", "created_at", "status",
                         "shipment__tracking_ended_at")
        ):
            known[pk] = (number, saga_status, (last_event_at or created_at) < settled,
                         status in CLOSED_FOR_DELIVERY or tracking_ended_at is not None)
    for order_id, workflow_ids in by_order.items():
        for workflow_id in workflow_ids:
            if order_id not in known:
                found.add(Kind.ORPHAN_WORKFLOW, f"Workflow {workflow_id} is running but order #{order_id} does not exist",
                          workflow_id=workflow_id)
                continue
            number, saga_status, settled_order, delivery_closed = known[order_id]
            if workflow_id.startswith("order-") and saga_status in TERMINAL_SAGA_STATUSES and settled_order:
                found.add(Kind.ORPHAN_WORKFLOW, f"Workflow {workflow_id} is still running although {number}'s saga "
                          f"{SagaStatus(saga_status).label}", order_id=order_id, workflow_id=workflow_id)
            elif workflow_id.startswith("delivery-") and delivery_closed and settled_order:
                found.add(Kind.ORPHAN_WORKFLOW, f"Delivery tracker {workflow_id} is still running although "
                          f"{number}'s delivery is settled", order_id=order_id, workflow_id=workflow_id)

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


# Orders compared with the outside world's books per round of lookups: 3,000 keys a batch,
# so 100,000 orders take 100 lookups of each kind and never hold more than a batch in memory.
OUTSIDE_BATCH = 1000


def _check_outside_books(found: Findings, now: datetime) -> int:
    """Our ledger against the gateway's and the carrier's books, key by key.

    Keys derive from the order's workflow id (`<id>:charge`, `<id>:charge:compensate`,
    `<id>:ship`), so the gateway is asked only about keys of ours, in batches. Orders that
    moved within the grace period are skipped unless finished: a running saga's call may
    have acted a moment before its row is written.
    """
    gateway, carrier = payment_gateway(), shipping_carrier()
    settled = now - timedelta(seconds=settings.RECONCILIATION_GRACE_SECONDS)
    due = (Q(saga_status__in=TERMINAL_SAGA_STATUSES) | Q(last_event_at__lt=settled)
           | Q(last_event_at=None, created_at__lt=settled))
    orders = Order.objects.exclude(workflow_id=None).filter(due).order_by("pk")
    checked, last_pk = 0, 0
    while True:
        batch = list(orders.filter(pk__gt=last_pk)
                     .values_list("pk", "number", "status", "currency", "workflow_id")[:OUTSIDE_BATCH])
        if not batch:
            return checked
        _compare_batch(found, batch, gateway, carrier)
        checked += len(batch)
        last_pk = batch[-1][0]


def _compare_batch(found: Findings, batch: list[tuple], gateway, carrier) -> None:
    ledger: dict[int, dict[str, tuple]] = defaultdict(dict)
    for order_id, key, kind, amount, currency, reference in (
        Payment.objects.filter(order_id__in=[row[0] for row in batch]).order_by()
        .values_list("order_id", "idempotency_key", "kind", "amount", "currency", "gateway_reference")
    ):
        ledger[order_id][key] = (kind, amount, currency, reference)
    returns = return_refund_keys([row[0] for row in batch])
    keys = {k for row in batch for k in (f"{row[4]}:charge", f"{row[4]}:charge:compensate")}
    keys.update(k for rows in ledger.values() for k in rows)
    keys.update(k for rows in returns.values() for k in rows)
    books = gateway.payments_lookup(sorted(keys))
    undone = [row for row in batch if row[2] in UNDONE_STATUSES]
    parcels = carrier.shipments_lookup([f"{row[4]}:ship" for row in undone]) if undone else {}

    for pk, number, status, currency, workflow_id in batch:
        ours = ledger.get(pk, {})
        keys_of_order = {f"{workflow_id}:charge", f"{workflow_id}:charge:compensate", *ours, *returns.get(pk, ())}
        differ, unrecorded = [], []
        net = Decimal(0)
        for key in sorted(keys_of_order):
            booked, row = books.get(key), ours.get(key)
            if booked is not None:
                net += booked.amount if booked.kind == Payment.Kind.CHARGE else -booked.amount
            if row is None and booked is not None:
                unrecorded.append(f"{booked.kind} of {booked.amount} {booked.currency} under {key} "
                                  f"({booked.reference})")
            elif row is not None and booked is None:
                differ.append(f"our ledger has a {row[0]} of {row[1]} {row[2]} under {key}; the gateway has nothing")
            elif row is not None and (row[0], row[1], row[2], row[3]) != (
                booked.kind, booked.amount, booked.currency, booked.reference
            ):
                differ.append(f"{key} is a {row[0]} of {row[1]} {row[2]} ({row[3]}) in our ledger, but a "
                              f"{booked.kind} of {booked.amount} {booked.currency} ({booked.reference}) at the gateway")
        if unrecorded:
            found.add(Kind.GATEWAY_UNRECORDED, f"{number}: the gateway booked what our ledger never recorded: "
                      + "; ".join(unrecorded), order_id=pk)
        if differ:
            found.add(Kind.GATEWAY_MISMATCH, f"{number}: " + "; ".join(differ), order_id=pk)
        if status in UNDONE_STATUSES and net != 0:
            found.add(Kind.MONEY_AT_GATEWAY, f"{number} is {status}, but the gateway holds {net} {currency} "
                      "(charged minus refunded under its keys)", order_id=pk)
        booking = parcels.get(f"{workflow_id}:ship")
        if status in UNDONE_STATUSES and booking is not None and booking.active:
            found.add(Kind.PARCEL_NOT_CANCELLED, f"{number} is {status}, but the carrier still has parcel(s) "
                      f"{', '.join(map(str, booking.active))} booked under {workflow_id}:ship",
                      order_id=pk)


@dataclass
class CheckedCounts:
    products: int
    orders: int
    workflows: int | None  # None: Temporal could not be asked


def invariants_check(found: Findings, *, running: dict[str, str] | None, now: datetime) -> CheckedCounts:
    """Run every check on one snapshot of the database, reporting into `found`.

    `running` is running_saga_workflows() (None skips the Temporal checks). Must not run
    inside a transaction on Postgres: it opens its own, REPEATABLE READ and read only.
    """
    with _snapshot():
        products = _check_stock(found)
        payments = _payments_by_order()
        orders = _check_money(found, payments)
        _check_keys(found)
        _check_finished_sagas(found, payments)
        _check_outside_books(found, now)
        check_returns(found, now)
        if running is not None:
            _check_workflows(found, running, now)
    return CheckedCounts(products=products, orders=orders, workflows=len(running) if running is not None else None)
