"""The invariants of shared/DESIGN.md, checked against the database after saga tests."""

from collections import defaultdict
from decimal import Decimal

from django.db.models import Count

from django.core import mail

from orders.models import (
    NotificationAttempt, Order, Payment, Product, Reservation, SagaEvent, SandboxPaymentRecord, StockMovement,
)
from orders.status import ORDER_STATUS_AFTER_SAGA, TERMINAL_SAGA_STATUSES, OrderStatus


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
        if order.status in (OrderStatus.COMPLETED, OrderStatus.DELIVERED):
            assert charged - refunded == order.total, f"{order}: completed but net {charged - refunded}"
        elif order.status in (OrderStatus.FAILED, OrderStatus.CANCELLED, OrderStatus.REJECTED):
            assert charged - refunded == 0, f"{order}: {order.status} but net {charged - refunded}"


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


def assert_invariants() -> None:
    assert_stock_conserved()
    assert_money_balances()
    assert_terminal_sagas_consistent()
    assert_one_finished_event_per_saga()
    assert_no_email_sent_twice()
