"""Reconciliation of returns and refunds (called by ops.reconciliation_checks on its snapshot).

- a refunded return has its refund in our ledger, of its amount, under its key; any other
  return has none;
- per order, charged minus refunded equals the total less what refunded returns gave back:
  reconciliation_checks checks the order saga's own money without returns' refunds, and
  here returns' refunds add up to exactly the refunded returns;
- the order's money books (charged_total, refunded_total, refund_pending_total) match the
  ledger and the open returns;
- no return waits for its parcel past its deadline (its saga closes it then);
- stock came back (a return's restock) only for returns whose parcel came back.
"""

from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db.models import Sum

from orders.models import Order, Payment, Return, StockMovement

from .models import Discrepancy

Kind = Discrepancy.Kind
# A return's restock key: `<order workflow id>:r<return pk>:restock` (orders.services.return_steps).
RETURN_RESTOCK = r":r[0-9]+:restock$"
PARCEL_BACK = (Return.State.RECEIVED, Return.State.REFUNDING, Return.State.STUCK, Return.State.REFUNDED,
               Return.State.ABANDONED)


def return_refund_keys(order_ids: list[int]) -> dict[int, list[str]]:
    """The gateway keys of these orders' returns' refunds (asked whether booked or not)."""
    keys: dict[int, list[str]] = defaultdict(list)
    for order_id, key in Return.objects.filter(order_id__in=order_ids).values_list("order_id", "refund_key"):
        keys[order_id].append(key)
    return keys


def check_returns(found, now: datetime) -> int:
    refunds = {key: (amount, kind) for key, amount, kind in
               Payment.objects.filter(idempotency_key__in=Return.objects.values("refund_key"))
               .values_list("idempotency_key", "amount", "kind")}
    restocked = set(StockMovement.objects.filter(idempotency_key__regex=RETURN_RESTOCK)
                    .values_list("idempotency_key", flat=True).distinct())
    settled = now - timedelta(seconds=settings.RECONCILIATION_GRACE_SECONDS)
    pending: dict[int, Decimal] = defaultdict(Decimal)
    checked = 0
    for ret in Return.objects.select_related("order").order_by("pk").iterator(chunk_size=2000):
        checked += 1
        order, problems = ret.order, []
        refund = refunds.get(ret.refund_key)
        if ret.state == Return.State.REFUNDED:
            if refund is None:
                problems.append(f"refunded, but our ledger has no refund under {ret.refund_key}")
            elif refund != (ret.amount, Payment.Kind.REFUND):
                problems.append(f"refunded {ret.amount}, but the ledger holds a {refund[1]} of {refund[0]}")
        elif refund is not None:
            problems.append(f"{ret.get_state_display()}, yet the ledger holds a refund of {refund[0]}")
        if ret.state in Return.OPEN_STATES:
            pending[ret.order_id] += ret.amount
        if (ret.state == Return.State.AWAITING_PARCEL and ret.deadline
                and ret.deadline < settled - timedelta(seconds=settings.RECONCILIATION_GRACE_SECONDS)):
            problems.append(f"still waits for its parcel, due by {ret.deadline:%Y-%m-%d %H:%M}: its saga is not running")
        if f"{order.workflow_id}:r{ret.pk}:restock" in restocked and ret.state not in PARCEL_BACK:
            problems.append(f"{ret.get_state_display()}, yet stock was restocked for it")
        if problems:
            found.add(Kind.SAGA_INCONSISTENT, f"{order.number}, return #{ret.pk}: " + "; ".join(problems),
                      order_id=order.pk, workflow_id=ret.workflow_id)
    _check_books(found, pending)
    return checked


def _check_books(found, pending: dict[int, Decimal]) -> None:
    """The order's money columns against its ledger and its open returns."""
    ledger: dict[int, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for order_id, kind, amount in Payment.objects.order_by().values_list("order_id", "kind").annotate(s=Sum("amount")):
        ledger[order_id][kind] = amount
    books = Order.objects.order_by("pk").values_list("pk", "number", "charged_total", "refunded_total",
                                                     "refund_pending_total")
    # One finding per order for its money: a ledger row changed behind the services shows
    # in both the sum and the books, and is one incident to look at.
    money_rows = {row.order_id: row for row in found.rows if row.kind == Kind.MONEY_MISMATCH and row.order_id}
    for pk, number, charged, refunded, promised in books.iterator(chunk_size=5000):
        paid = ledger.get(pk, {})
        want = (paid.get(Payment.Kind.CHARGE, Decimal(0)), paid.get(Payment.Kind.REFUND, Decimal(0)), pending[pk])
        if (charged, refunded, promised) == want:
            continue
        problem = (f"its books say charged {charged}, refunded {refunded}, {promised} promised to returns; "
                   f"the ledger and open returns say {want[0]}, {want[1]}, {want[2]}")
        if pk in money_rows:
            money_rows[pk].detail = f"{money_rows[pk].detail}; {problem}"[:2000]
        else:
            found.add(Kind.MONEY_MISMATCH, f"{number}: {problem}", order_id=pk)
