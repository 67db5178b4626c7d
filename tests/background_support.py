"""Test data helpers for the background-operation tests: rows written directly, for
states that need no saga."""

import uuid
from datetime import timedelta

from django.utils import timezone

from orders.models import Order, SagaEvent
from orders.status import OrderStatus, SagaStatus


def order_rows_create(count: int, *, saga_status: str, status: str, quiet_for: timedelta | None = None,
                      start: int = 0, prefix: str = "T") -> list[Order]:
    """Bare orders in a given state (no lines, no saga, no workflow in Temporal);
    `quiet_for` backdates their last event."""
    now = timezone.now()
    last_event = now - quiet_for if quiet_for is not None else now
    orders = Order.objects.bulk_create(
        # A unique placeholder number until the primary key is known.
        Order(number=f"tmp-{uuid.uuid4().hex[:14]}", customer_name="Bulk Row", customer_email="rows@example.com",
              status=status, saga_status=saga_status, last_event_at=last_event)
        for _ in range(count)
    )
    run = uuid.uuid4().hex[:6]
    for order in orders:
        order.number = f"{prefix}-{order.pk:06d}"
        # Unique per call: no workflow of this id exists on the session's Temporal server,
        # even if an earlier test started one for an order that had the same primary key.
        order.workflow_id = f"order-{order.pk}-{run}"
    Order.objects.bulk_update(orders, ["number", "workflow_id"])
    return orders


def healthy_orders_create(count: int) -> None:
    """Half finished sagas, half running ones that recorded an event just now."""
    order_rows_create(count // 2, saga_status=SagaStatus.COMPLETED, status=OrderStatus.COMPLETED,
                      quiet_for=timedelta(days=2))
    order_rows_create(count - count // 2, saga_status=SagaStatus.RUNNING, status=OrderStatus.PROCESSING)


def order_backdate(order_id: int, seconds: float) -> None:
    """Make an order look quiet: its last event (and creation) `seconds` ago."""
    moment = timezone.now() - timedelta(seconds=seconds)
    Order.objects.filter(pk=order_id).update(last_event_at=moment, created_at=moment)


def saga_event_count(order_id: int) -> int:
    return SagaEvent.objects.filter(order_id=order_id).count()
