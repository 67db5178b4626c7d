"""Test data helpers for the background-operation tests: rows written directly, for
states that need no saga.

Rows are written in bulk because the sweeper's cost tests need thousands of them; the
services (tests/saga_states.py) would take minutes. Only (status, saga status) pairs that
the app itself can produce are accepted, so these rows never show a state it cannot reach.
"""

import uuid
from datetime import timedelta

from django.utils import timezone

from orders.models import Order, SagaEvent
from orders.status import ORDER_STATUS_AFTER_SAGA, TERMINAL_SAGA_STATUSES, OrderStatus, SagaStatus


def _reachable(status: str, saga_status: str) -> bool:
    """Whether the app can leave an order in this pair (orders.services, orders.status)."""
    if saga_status in TERMINAL_SAGA_STATUSES:
        after = ORDER_STATUS_AFTER_SAGA[saga_status]
        return status == after or (after == OrderStatus.COMPLETED and status == OrderStatus.DELIVERED)
    if saga_status == SagaStatus.PENDING:
        return status == OrderStatus.PLACED
    # Running, compensating, stuck or waiting on a follow-up: validated or not yet.
    return status in (OrderStatus.PLACED, OrderStatus.PROCESSING)


def order_rows_create(count: int, *, saga_status: str, status: str, quiet_for: timedelta | None = None,
                      start: int = 0, prefix: str = "T") -> list[Order]:
    """Bare orders in a given state (no lines, no saga, no workflow in Temporal);
    `quiet_for` backdates their last event."""
    assert _reachable(status, saga_status), f"the app never leaves an order {status} with its saga {saga_status}"
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
