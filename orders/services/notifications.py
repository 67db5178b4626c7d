"""Telling the customer, and the follow-up queue for when that fails."""

from django.conf import settings
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string
from django.utils import timezone

from ..adapters import customer_notifier
from ..adapters.base import Notification
from ..crashpoints import crash_point
from ..errors import NotificationFailed
from ..locks import lock_order
from ..models import FollowUp, NotificationAttempt, Order, SagaEvent
from ..status import SagaStatus
from .events import saga_event_record


def order_status_url(order: Order) -> str:
    return f"{settings.PUBLIC_BASE_URL.rstrip('/')}/status/{order.public_token}/"


def customer_notify(*, order_id: int, attempt: int) -> str:
    """Send the order confirmation. Raises NotificationFailed (recorded as an attempt)."""
    order = Order.objects.get(pk=order_id)
    context = {"order": order, "lines": order.lines.select_related("product"), "status_url": order_status_url(order)}
    notification = Notification(
        order_id=order.pk,
        to=order.customer_email,
        subject=f"Your order {order.number} is on its way",
        body=render_to_string("orders/email/order_confirmed.txt", context),
    )
    try:
        customer_notifier().send(notification)
    except NotificationFailed as exc:
        NotificationAttempt.objects.create(order=order, succeeded=False, error=str(exc), attempt=attempt)
        raise
    crash_point("notify.after_send", order=order_id)
    with transaction.atomic():
        order = lock_order(order_id)
        NotificationAttempt.objects.create(order=order, succeeded=True, attempt=attempt)
        detail = f"Emailed {order.customer_email}"
        saga_event_record(order, kind=SagaEvent.Kind.SUCCEEDED, step="notify", detail=detail, attempt=attempt)
    crash_point("notify.after_commit", order=order_id)
    return detail


def followup_open(*, order_id: int, reason: str) -> FollowUp:
    """Put the order on the follow-up queue (at most one open item per order)."""
    with transaction.atomic():
        order = lock_order(order_id)
        followup = order.followups.filter(state=FollowUp.State.OPEN).first()
        if followup is None:
            try:
                with transaction.atomic():
                    followup = FollowUp.objects.create(order=order, reason=reason[:2000])
            except IntegrityError:
                followup = order.followups.get(state=FollowUp.State.OPEN)
        saga_event_record(order, kind=SagaEvent.Kind.FOLLOWUP, step="notify", detail=reason,
                          saga_status=SagaStatus.NEEDS_FOLLOWUP, last_error=reason)
    return followup


def followup_close(*, order_id: int, resolution: str) -> None:
    """Close the order's open follow-up: 'resolved' by staff or 'resent' successfully."""
    FollowUp.objects.filter(order_id=order_id, state=FollowUp.State.OPEN).update(
        state=FollowUp.State.RESOLVED, resolution=resolution, resolved_at=timezone.now()
    )
