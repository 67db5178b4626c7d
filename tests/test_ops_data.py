"""Helpers (no tests) that put orders into the states the operations pages show, without
running sagas: orders are placed through order_create; follow-ups are opened through the
saga's own services (tests/saga_states.py); stuck orders have their saga columns and events
written directly, in the state the saga's services leave them (processing, stuck at a step).
"""

from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from orders.models import FollowUp, Order, Product, SagaEvent
from orders.services.events import saga_event_record
from orders.status import OrderStatus, SagaStatus
from orders.models import OperatorAction

from .factories import make_order, make_product
from .saga_states import order_needs_followup

ROLES = ("viewer", "support", "operator", "admin")


def shelf(stock: int = 10_000) -> Product:
    return make_product(price="20.00", stock=stock)


def placed_order(product: Product | None = None, *, email: str = "ada@example.com") -> Order:
    return make_order(products=[(product or shelf(), 1)], email=email, start_saga=False)


def stuck_order(product: Product | None = None, *, step: str = "charge", failed: int = 3,
                error: str = "Payment gateway unavailable", minutes_ago: int = 5, email: str = "ada@example.com") -> Order:
    """An order whose saga gave up on `step` after `failed` failed attempts."""
    order = placed_order(product, email=email)
    since = timezone.now() - timedelta(minutes=minutes_ago)
    Order.objects.filter(pk=order.pk).update(
        status=OrderStatus.PROCESSING, saga_status=SagaStatus.STUCK, current_step=step,
        last_error=error, stuck_since=since,
    )
    events = [SagaEvent(order=order, step="validate", kind="succeeded")]
    events += [SagaEvent(order=order, step=step, kind="failed", detail=error, attempt=n) for n in range(1, failed + 1)]
    events.append(SagaEvent(order=order, step=step, kind="stuck", detail=f"{error} (gave up after {failed} attempts)"))
    SagaEvent.objects.bulk_create(events)
    order.refresh_from_db()
    return order


def followup_order(product: Product | None = None, *, reason: str = "Mail server refused the message",
                   claimed_by=None, email: str = "grace@example.com") -> FollowUp:
    """An order whose customer could not be notified, waiting in the follow-up queue."""
    order = placed_order(product, email=email)
    order_needs_followup(order, reason=reason)
    followup = FollowUp.objects.get(order=order)
    if claimed_by is not None:
        FollowUp.objects.filter(pk=followup.pk).update(claimed_by=claimed_by)
        followup.refresh_from_db()
    return followup


def resolved_followup(product: Product | None = None, *, days_ago: int = 1) -> FollowUp:
    followup = followup_order(product)
    FollowUp.objects.filter(pk=followup.pk).update(
        state=FollowUp.State.RESOLVED, resolution="resolved", resolved_at=timezone.now() - timedelta(days=days_ago)
    )
    followup.refresh_from_db()
    return followup


def audit_row(order: Order, actor, *, action: str = "retry", outcome: str = "applied", reason: str = "gateway back",
              days_ago: int = 0) -> OperatorAction:
    row = OperatorAction.objects.create(order=order, action=action, actor=actor, reason=reason, outcome=outcome)
    if days_ago:
        OperatorAction.objects.filter(pk=row.pk).update(created_at=timezone.now() - timedelta(days=days_ago))
        row.refresh_from_db()
    return row


def record_event(order: Order, *, step: str = "charge", kind: str = "started") -> SagaEvent:
    """Record an event the way the saga does: in a transaction, broadcast after commit."""
    with transaction.atomic():
        return saga_event_record(order, kind=kind, step=step, detail="from a test")
