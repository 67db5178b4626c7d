"""Telling the customer, and the follow-up queue for when that fails."""

from django.conf import settings
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string
from django.utils import timezone

from ..adapters import customer_notifier
from ..adapters.base import Notification
from .. import metrics
from ..crashpoints import crash_point
from ..errors import NotificationFailed
from ..locks import lock_order
from ..models import FollowUp, NotificationAttempt, Order, SagaEvent
from ..status import SagaStatus
from .events import saga_event_record


def order_status_url(order: Order) -> str:
    return f"{settings.PUBLIC_BASE_URL.rstrip('/')}/status/{order.public_token}/"


def notification_key(step_key: str, outcome: str) -> str:
    """One message per saga, step and outcome: `order-42:notify:confirmed`."""
    return f"{step_key}:{outcome}"


def customer_notify(*, order_id: int, idempotency_key: str, attempt: int) -> str:
    """Send the order confirmation once per key (the notify step's key). Raises
    NotificationFailed (recorded as a failed attempt, which never blocks a later send).

    Our ledger first, then the notifier's own book (a send whose answer was lost to a
    crash), and only then a send; the success and its event commit together.
    Locks: the order row (for the success).
    """
    key = notification_key(idempotency_key, "confirmed")
    if NotificationAttempt.objects.filter(idempotency_key=key, succeeded=True).exists():
        return "already emailed"
    order = Order.objects.get(pk=order_id)
    notifier = customer_notifier()
    detail = f"Emailed {order.customer_email}"
    if notifier.sent_lookup(key):
        detail += " (sent by an earlier attempt)"
    else:
        context = {"order": order, "lines": order.lines.select_related("product"),
                   "status_url": order_status_url(order)}
        notification = Notification(
            order_id=order.pk,
            to=order.customer_email,
            subject=f"Your order {order.number} is on its way",
            body=render_to_string("orders/email/order_confirmed.txt", context),
            idempotency_key=key,
        )
        try:
            notifier.send(notification)
        except NotificationFailed as exc:
            NotificationAttempt.objects.create(
                order=order, succeeded=False, error=str(exc), attempt=attempt, idempotency_key=key
            )
            raise
    crash_point("notify.after_send", order=order_id)
    try:
        with transaction.atomic():
            order = lock_order(order_id)
            NotificationAttempt.objects.create(order=order, succeeded=True, attempt=attempt, idempotency_key=key)
            saga_event_record(order, kind=SagaEvent.Kind.SUCCEEDED, step="notify", detail=detail, attempt=attempt,
                              key=f"{key}:sent")
    except IntegrityError:
        # Another attempt recorded this key first: one email, one success row.
        if not NotificationAttempt.objects.filter(idempotency_key=key, succeeded=True).exists():
            raise
        return "already emailed"
    crash_point("notify.after_commit", order=order_id)
    return detail


def customer_message_send(*, order_id: int, key: str, attempt: int, subject: str, template: str,
                          context: dict, step: str | None) -> str:
    """Send one message to the order's customer, once per `key` (a saga, step and outcome),
    the way customer_notify sends the confirmation: our ledger, then the notifier's book,
    then a send; the success and its event (on `step`; none when None) commit together. Raises
    NotificationFailed (recorded as a failed attempt). Locks: the order row (for the success).
    """
    if NotificationAttempt.objects.filter(idempotency_key=key, succeeded=True).exists():
        return "already emailed"
    order = Order.objects.get(pk=order_id)
    notifier = customer_notifier()
    detail = f"Emailed {order.customer_email}: {subject}"
    if notifier.sent_lookup(key):
        detail += " (sent by an earlier attempt)"
    else:
        body = render_to_string(template, {"order": order, "status_url": order_status_url(order), **context})
        try:
            notifier.send(Notification(order_id=order.pk, to=order.customer_email, subject=subject, body=body,
                                       idempotency_key=key))
        except NotificationFailed as exc:
            NotificationAttempt.objects.create(
                order=order, succeeded=False, error=str(exc), attempt=attempt, idempotency_key=key
            )
            raise
    try:
        with transaction.atomic():
            order = lock_order(order_id)
            NotificationAttempt.objects.create(order=order, succeeded=True, attempt=attempt, idempotency_key=key)
            if step is not None:
                saga_event_record(order, kind=SagaEvent.Kind.SUCCEEDED, step=step, detail=detail, attempt=attempt,
                                  key=f"{key}:sent")
    except IntegrityError:
        if not NotificationAttempt.objects.filter(idempotency_key=key, succeeded=True).exists():
            raise
        return "already emailed"
    return detail


OUTCOME_SUBJECTS = {
    "failed": "We couldn't complete your order {number}",
    "cancelled": "Your order {number} has been cancelled",
}


def customer_outcome_notify(*, order_id: int, outcome: str, idempotency_key: str, attempt: int) -> str:
    """Tell the customer their order did not go through ("failed") or was cancelled, and
    what became of their money, once per outcome. Sent after the compensations, so the
    refund it names is in our ledger. No saga event: the order's timeline ends as it did;
    the notification ledger shows the message. Raises NotificationFailed.
    """
    from ..models import Payment

    order = Order.objects.get(pk=order_id)
    amounts = {kind: sum(order.payments.filter(kind=kind).values_list("amount", flat=True), start=0)
               for kind in (Payment.Kind.CHARGE, Payment.Kind.REFUND)}
    return customer_message_send(
        order_id=order_id, key=notification_key(idempotency_key, outcome), attempt=attempt,
        subject=OUTCOME_SUBJECTS[outcome].format(number=order.number),
        template="orders/email/order_outcome.txt",
        context={"outcome": outcome, "charged": amounts[Payment.Kind.CHARGE],
                 "refunded": amounts[Payment.Kind.REFUND], "lines": order.lines.select_related("product")},
        step=None,
    )


def followup_open(*, order_id: int, reason: str, key: str = "") -> FollowUp | None:
    """Put the order on the follow-up queue (at most one open item per order).

    Once per `key` (the saga's bookkeeping key): a replay opens nothing and records nothing.
    Locks: the order row.
    """
    with transaction.atomic():
        order = lock_order(order_id)
        if key and SagaEvent.objects.filter(idempotency_key=key).exists():
            return order.followups.filter(state=FollowUp.State.OPEN, kind=FollowUp.Kind.NOTIFY).first()
        followup = order.followups.filter(state=FollowUp.State.OPEN, kind=FollowUp.Kind.NOTIFY).first()
        opened = False
        if followup is None:
            try:
                with transaction.atomic():
                    followup = FollowUp.objects.create(order=order, reason=reason[:2000])
                    opened = True
            except IntegrityError:
                followup = order.followups.get(state=FollowUp.State.OPEN, kind=FollowUp.Kind.NOTIFY)
        saga_event_record(order, kind=SagaEvent.Kind.FOLLOWUP, step="notify", detail=reason, key=key or None,
                          saga_status=SagaStatus.NEEDS_FOLLOWUP, last_error=reason)
    if opened:
        metrics.saga_stuck(step="notify", saga_status=SagaStatus.NEEDS_FOLLOWUP.value)
    return followup


def followup_create(order: Order, *, kind: str, reason: str) -> FollowUp:
    """One open follow-up per order and kind: an open one of the kind is kept as it is."""
    try:
        with transaction.atomic():
            return FollowUp.objects.create(order=order, kind=kind, reason=reason[:2000])
    except IntegrityError:
        return FollowUp.objects.get(order=order, kind=kind, state=FollowUp.State.OPEN)


def outcome_followup_open(*, order_id: int, reason: str, key: str) -> FollowUp | None:
    """The mailer refused to tell an undone order's customer how it ended: put it on the
    follow-up queue for staff to reach them another way. The saga ends as it would (failed,
    cancelled) and waits for nobody: staff resolve it on the queue (commands' resolve-here).
    Once per `key` (the saga's bookkeeping key): a replay after staff resolved it opens
    nothing. Its event is on the notify track and leaves the saga's state alone.
    Locks: the order row.
    """
    with transaction.atomic():
        order = lock_order(order_id)
        if SagaEvent.objects.filter(idempotency_key=key).exists():
            return None
        followup = followup_create(order, kind=FollowUp.Kind.OUTCOME_UNTOLD, reason=reason)
        saga_event_record(order, kind=SagaEvent.Kind.FOLLOWUP, step="notify", detail=reason, key=key)
    return followup


def followup_close(*, order_id: int, resolution: str) -> None:
    """Close the order's open notify follow-up: 'resolved' by staff or 'resent' successfully."""
    FollowUp.objects.filter(order_id=order_id, state=FollowUp.State.OPEN, kind=FollowUp.Kind.NOTIFY).update(
        state=FollowUp.State.RESOLVED, resolution=resolution, resolved_at=timezone.now()
    )
