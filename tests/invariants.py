"""The invariants of shared/DESIGN.md, checked against the database after saga tests."""

from collections import defaultdict
from decimal import Decimal

from django.db.models import Count

from django.core import mail

from orders.models import (
    NotificationAttempt,
    Order,
    Payment,
    Product,
    Reservation,
    Return,
    SagaEvent,
    StockMovement,
)
from orders.status import ORDER_STATUS_AFTER_SAGA, TERMINAL_SAGA_STATUSES, OrderStatus
from sandbox.models import SandboxParcel, SandboxPaymentRecord

COMPLETED = (OrderStatus.COMPLETED, OrderStatus.DELIVERED)
UNDONE = (OrderStatus.FAILED, OrderStatus.CANCELLED, OrderStatus.REJECTED)


def assert_stock_conserved() -> None:
    moved = defaultdict(lambda: defaultdict(int))
    for m in StockMovement.objects.all():
        moved[m.product_id][m.kind] += m.quantity
    for p in Product.objects.all():
        assert p.on_hand + p.reserved + p.sold == p.received, f"{p}: stock not conserved"
        k = moved[p.pk]
        assert p.reserved == k["reserve"] - k["release"] - k["confirm"], f"{p}: reserved does not match its ledger"
        assert p.sold == k["confirm"] - k["restock"], f"{p}: sold does not match its ledger"


def returned_amounts() -> dict[int, Decimal]:
    """Per order, what its refunded returns (and refunds without a return) gave back."""
    amounts: dict[int, Decimal] = defaultdict(Decimal)
    for order_id, amount in Return.objects.filter(state=Return.State.REFUNDED).values_list("order_id", "amount"):
        amounts[order_id] += amount
    return amounts


def assert_money_balances() -> None:
    for key, count in SandboxPaymentRecord.objects.values_list("idempotency_key").annotate(n=Count("id")):
        assert count == 1, f"gateway booked key {key} {count} times"
    for order in Order.objects.all():
        charges = [p for p in order.payments.all() if p.kind == Payment.Kind.CHARGE]
        assert len(charges) <= 1, f"{order} charged {len(charges)} times"
        charged = sum((p.amount for p in charges), Decimal(0))
        refunded = sum((p.amount for p in order.payments.all() if p.kind == Payment.Kind.REFUND), Decimal(0))
        assert refunded <= charged, f"{order}: refunded {refunded}, more than the {charged} charged"
        assert (order.charged_total, order.refunded_total) == (charged, refunded), (
            f"{order}: its books say charged {order.charged_total}, refunded {order.refunded_total}; "
            f"the ledger {charged}, {refunded}"
        )
        if order.status in (OrderStatus.COMPLETED, OrderStatus.DELIVERED):
            returned = returned_amounts()[order.pk]
            assert charged - refunded == order.total - returned, (
                f"{order}: completed, {returned} returned, but net {charged - refunded}"
            )
        elif order.status in (OrderStatus.FAILED, OrderStatus.CANCELLED, OrderStatus.REJECTED):
            assert charged - refunded == 0, f"{order}: {order.status} but net {charged - refunded}"


def _order_of_key(key: str, orders_by_workflow: dict[str, Order]) -> Order | None:
    # Keys are `<workflow id>:<step>[:compensate]`; workflow ids hold no ':'.
    return orders_by_workflow.get(key.split(":", 1)[0])


def assert_ledger_equals_gateway_books() -> None:
    """From both sides: every ledger row is at the gateway under its key with the same kind,
    amount and reference; every gateway booking under an order's key is in our ledger; and
    at the gateway too charged minus refunded is the total (completed) or zero (undone)."""
    orders_by_workflow = {o.workflow_id: o for o in Order.objects.exclude(workflow_id=None)}
    books = {r.idempotency_key: r for r in SandboxPaymentRecord.objects.all()}
    ledger = {p.idempotency_key: p for p in Payment.objects.select_related("order")}
    for key, payment in ledger.items():
        booked = books.get(key)
        assert booked is not None, f"{payment.order}: our ledger has {payment.kind} {key} the gateway never booked"
        assert (booked.kind, booked.amount, booked.currency, booked.reference) == (
            payment.kind, payment.amount, payment.currency, payment.gateway_reference
        ), f"{payment.order}: {key} is {payment.kind} {payment.amount} in our ledger, {booked.kind} {booked.amount} at the gateway"
    net_at_gateway: dict[int, Decimal] = defaultdict(Decimal)
    returned = returned_amounts()
    for key, booked in books.items():
        order = _order_of_key(key, orders_by_workflow)
        if order is None:
            continue  # planted straight into the sandbox, for no order of ours
        assert key in ledger, f"{order}: the gateway holds {booked.kind} {booked.amount} under {key}, our ledger has no row"
        net_at_gateway[order.pk] += booked.amount if booked.kind == "charge" else -booked.amount
    for order in orders_by_workflow.values():
        net = net_at_gateway[order.pk]
        assert net >= 0, f"{order}: the gateway refunded more than it charged ({net})"
        if order.status in COMPLETED:
            assert net == order.total - returned[order.pk], (
                f"{order}: completed, {returned[order.pk]} returned, but the gateway holds {net} of {order.total}"
            )
        elif order.status in UNDONE:
            assert net == 0, f"{order}: {order.status} but the gateway holds {net} {order.currency}"


def assert_parcels_match_carrier() -> None:
    """No label left at the carrier for an order that failed or was cancelled."""
    orders_by_workflow = {o.workflow_id: o for o in Order.objects.exclude(workflow_id=None)}
    for parcel in SandboxParcel.objects.filter(cancelled=False):
        order = _order_of_key(parcel.shipment_key, orders_by_workflow)
        if order is not None:
            assert order.status not in UNDONE, (
                f"{order}: {order.status} but parcel {parcel.parcel_number} is still booked at the carrier"
            )


def assert_terminal_sagas_consistent() -> None:
    for order in Order.objects.filter(saga_status__in=TERMINAL_SAGA_STATUSES):
        expected = ORDER_STATUS_AFTER_SAGA[order.saga_status]
        assert order.status in (expected, OrderStatus.DELIVERED if expected == OrderStatus.COMPLETED else expected), (
            f"{order}: saga {order.saga_status} but order {order.status}"
        )
        finished = order.events.filter(kind=SagaEvent.Kind.FINISHED, step="").count()
        assert finished == 1, f"{order}: {finished} 'finished' events"
        states = set(order.reservations.values_list("state", flat=True))
        if order.status in (OrderStatus.COMPLETED, OrderStatus.DELIVERED):
            assert states == {Reservation.State.CONFIRMED}, f"{order}: completed with reservations {states}"
        else:
            assert not states & {Reservation.State.HELD, Reservation.State.CONFIRMED}, (
                f"{order}: {order.status} still holds stock {states}"
            )


def assert_one_finished_event_per_saga() -> None:
    """Terminal or not, no saga says 'finished' twice (a replayed bookkeeping activity)."""
    twice = (SagaEvent.objects.filter(kind=SagaEvent.Kind.FINISHED, step="").values("order_id")
             .annotate(n=Count("id")).filter(n__gt=1))
    assert not twice, f"sagas with more than one 'finished' event: {list(twice)}"


def assert_no_email_sent_twice() -> None:
    """Every customer email is sent once per outcome: once in our ledger, once at the mail backend."""
    twice = (NotificationAttempt.objects.filter(succeeded=True).exclude(idempotency_key="")
             .values("idempotency_key").annotate(n=Count("id")).filter(n__gt=1))
    assert not twice, f"notification keys recorded as sent twice: {list(twice)}"
    message_ids = [m.extra_headers.get("Message-ID") for m in getattr(mail, "outbox", [])]
    keyed = [m for m in message_ids if m]
    assert len(keyed) == len(set(keyed)), f"an email went out twice: {sorted(keyed)}"


def assert_no_tracking_for_settled_parcels() -> None:
    """A parcel delivered, returned or lost has its tracking ended, and only a tracked
    (booked) shipment can still be tracked: no open tracker for a closed order, in our records."""
    from orders.models import Shipment

    settled = Shipment.objects.filter(state__in=[Shipment.State.DELIVERED, Shipment.State.RETURNED,
                                                 Shipment.State.LOST], tracking_ended_at=None)
    assert not settled.exists(), f"settled parcels still tracked: {list(settled.values_list('order_id', 'state'))}"
    delivered_untracked = Order.objects.filter(status=OrderStatus.DELIVERED).exclude(
        shipment__state=Shipment.State.DELIVERED)
    assert not delivered_untracked.exists(), f"delivered orders whose parcel is not: {list(delivered_untracked)}"


async def assert_no_open_tracker_for_closed_order(client) -> None:
    """Temporal's side: every running delivery tracker belongs to an order whose delivery is open.

    Visibility lags, and a tracker writes its end a moment before it returns: a tracker
    seen running for a closed order is asked directly, for a few seconds, before it counts."""
    import asyncio
    import time

    from asgiref.sync import sync_to_async
    from temporalio.client import WorkflowExecutionStatus

    from orders.models import Shipment

    listed = [wf.id async for wf in client.list_workflows('ExecutionStatus="Running" AND WorkflowType="DeliveryTracking"')]

    async def still_running(ids: list[str]) -> list[str]:
        return [i for i in ids
                if (await client.get_workflow_handle(i).describe()).status == WorkflowExecutionStatus.RUNNING]

    def closed(running: list[str]) -> list[str]:
        bad = []
        for workflow_id in running:
            order = Order.objects.filter(workflow_id="order-" + workflow_id.removeprefix("delivery-")).first()
            if order is None:
                continue  # another test's, or a tracker a test started by hand
            shipment = Shipment.objects.filter(order=order).first()
            if order.status in (OrderStatus.DELIVERED, OrderStatus.FAILED, OrderStatus.CANCELLED,
                                OrderStatus.REJECTED) or (shipment and shipment.tracking_ended_at):
                bad.append(f"{workflow_id} ({order.status})")
        return bad

    deadline = time.monotonic() + 5
    bad = await sync_to_async(closed)(await still_running(listed))
    while bad and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        bad = await sync_to_async(closed)(await still_running([b.split(" ")[0] for b in bad]))
    assert not bad, f"delivery trackers still running for closed orders: {bad}"


def assert_returns_consistent() -> None:
    """Every return is finished, and what it says matches the ledger and the order's books:
    refunded ones have their refund (their amount, their key), others none; nothing is left
    pending; stock came back only for refunded returns' sellable lines."""
    pending: dict[int, Decimal] = defaultdict(Decimal)
    for ret in Return.objects.select_related("order"):
        assert ret.state in Return.TERMINAL_STATES, f"{ret}: still {ret.state}"
        refund = Payment.objects.filter(idempotency_key=ret.refund_key).first()
        if ret.state == Return.State.REFUNDED:
            assert refund is not None and refund.amount == ret.amount and refund.kind == Payment.Kind.REFUND, (
                f"{ret}: refunded, but the ledger holds {refund and refund.amount} under its key"
            )
        else:
            assert refund is None, f"{ret}: {ret.state}, yet refunded {refund.amount}"
            assert not StockMovement.objects.filter(idempotency_key=f"{ret.order.workflow_id}:r{ret.pk}:restock"
                                                    ).exists() or ret.state == Return.State.ABANDONED, (
                f"{ret}: {ret.state}, yet stock came back"
            )
        if ret.is_open:
            pending[ret.order_id] += ret.amount
    for order in Order.objects.exclude(refund_pending_total=0):
        assert order.refund_pending_total == pending[order.pk], (
            f"{order}: {order.refund_pending_total} pending refund, open returns hold {pending[order.pk]}"
        )


def assert_invariants() -> None:
    assert_stock_conserved()
    assert_money_balances()
    assert_ledger_equals_gateway_books()
    assert_parcels_match_carrier()
    assert_terminal_sagas_consistent()
    assert_one_finished_event_per_saga()
    assert_no_email_sent_twice()
    assert_no_tracking_for_settled_parcels()
    assert_returns_consistent()
