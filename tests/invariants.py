"""The invariants of shared/DESIGN.md, checked against the database after saga tests."""

from collections import defaultdict
from decimal import Decimal

from django.db.models import Count

from orders.models import Order, Payment, Product, Reservation, SagaEvent, StockMovement
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


def assert_money_balances() -> None:
    for key, count in SandboxPaymentRecord.objects.values_list("idempotency_key").annotate(n=Count("id")):
        assert count == 1, f"gateway booked key {key} {count} times"
    for order in Order.objects.all():
        charges = [p for p in order.payments.all() if p.kind == Payment.Kind.CHARGE]
        assert len(charges) <= 1, f"{order} charged {len(charges)} times"
        charged = sum((p.amount for p in charges), Decimal(0))
        refunded = sum((p.amount for p in order.payments.all() if p.kind == Payment.Kind.REFUND), Decimal(0))
        assert refunded <= charged, f"{order}: refunded {refunded}, more than the {charged} charged"
        if order.status in (OrderStatus.COMPLETED, OrderStatus.DELIVERED):
            assert charged - refunded == order.total, f"{order}: completed but net {charged - refunded}"
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
            assert net == order.total, f"{order}: completed but the gateway holds {net} of {order.total}"
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


def assert_invariants() -> None:
    assert_stock_conserved()
    assert_money_balances()
    assert_ledger_equals_gateway_books()
    assert_parcels_match_carrier()
    assert_terminal_sagas_consistent()
