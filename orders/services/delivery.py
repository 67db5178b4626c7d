"""After shipping: the delivery tracker's writes (how it ends, its follow-ups) and the
customer's shipped and delivered emails.

Each write is once per key (the tracker derives them from its workflow id), so an
activity re-run after a crash changes nothing; broadcasts go out after commit.
"""

from django.db import transaction
from django.utils import timezone

from ..locks import lock_order
from ..models import CarrierEvent, FollowUp, OperatorAction, Order, SagaEvent, Shipment
from ..saga.shared import DeliveryOutcome
from ..status import OrderStatus
from .commands import operator_action_outcome_record
from .events import saga_event_record
from .notifications import customer_message_send, followup_create, notification_key
from .returns import ReturnNotAllowed, refund_open
from .shipping import shipment_is_delivered

DELIVERY_FOLLOWUP_KINDS = (FollowUp.Kind.DELIVERY_OVERDUE, FollowUp.Kind.DELIVERY_FAILED)

_END_SHIPMENT_STATE = {
    DeliveryOutcome.DELIVERED: Shipment.State.DELIVERED,
    DeliveryOutcome.RETURNED: Shipment.State.RETURNED,
    DeliveryOutcome.LOST_REFUND: Shipment.State.LOST,
    DeliveryOutcome.LOST_RESHIP: Shipment.State.LOST,
}
_LOST_FOLLOWUP = {
    DeliveryOutcome.LOST_REFUND: (FollowUp.Kind.REFUND_DUE,
                                  "Parcel reported lost: refund the customer (returns and refunds)."),
    DeliveryOutcome.LOST_RESHIP: (FollowUp.Kind.RESHIP_DUE,
                                  "Parcel reported lost: send the customer a new parcel."),
}


def delivery_state(*, order_id: int) -> tuple[bool, bool]:
    """(delivered, returned), from our own records first (a webhook stored whose signal was
    lost, a staff decision), then from the carrier when it can be asked."""
    events = set(CarrierEvent.objects.filter(order_id=order_id, event__in=["delivered", "returned"])
                 .values_list("event", flat=True))
    if "delivered" in events:
        return True, False
    if "returned" in events:
        return False, True
    return shipment_is_delivered(order_id=order_id), False


def _end_detail(outcome: DeliveryOutcome, source: str) -> str:
    return {
        DeliveryOutcome.DELIVERED: f"Delivered (reported by {source})",
        DeliveryOutcome.RETURNED: f"Returned to the shop (reported by {source}); tracking ended",
        DeliveryOutcome.LOST_REFUND: "Reported lost by staff; a refund is due (follow-up opened)",
        DeliveryOutcome.LOST_RESHIP: "Reported lost by staff; a new parcel is due (follow-up opened)",
        DeliveryOutcome.GIVEN_UP: "Tracking ended: nobody settled the overdue delivery in time; "
                                  "its follow-up stays open",
    }[outcome]


def delivery_tracking_end(*, order_id: int, outcome: str, source: str, key: str,
                          action_id: int | None = None) -> bool:
    """The tracker's last write: the shipment's end state, the order delivered (when it
    was), delivery follow-ups closed (or a lost parcel's opened), the staff command's
    outcome, and a 'finished' event on the ship track. Once per key; returns whether it wrote.
    Locks: the order row.
    """
    outcome = DeliveryOutcome(outcome)
    with transaction.atomic():
        order = lock_order(order_id)
        if SagaEvent.objects.filter(idempotency_key=key).exists():
            return False
        now = timezone.now()
        shipment_update = {"tracking_ended_at": now, "updated_at": now}
        if outcome in _END_SHIPMENT_STATE:
            shipment_update["state"] = _END_SHIPMENT_STATE[outcome]
        if outcome == DeliveryOutcome.DELIVERED:
            shipment_update["delivered_at"] = now
        Shipment.objects.filter(order=order).update(**shipment_update)
        if outcome != DeliveryOutcome.GIVEN_UP:
            FollowUp.objects.filter(order=order, state=FollowUp.State.OPEN, kind__in=DELIVERY_FOLLOWUP_KINDS).update(
                state=FollowUp.State.RESOLVED, resolution=outcome.value[:20], resolved_at=now)
        detail = _end_detail(outcome, source)
        if outcome == DeliveryOutcome.LOST_REFUND:
            detail = _lost_parcel_refund(order, action_id=action_id) or detail
        elif outcome in _LOST_FOLLOWUP:
            kind, reason = _LOST_FOLLOWUP[outcome]
            followup_create(order, kind=kind, reason=reason)
        recorded_action = None
        if action_id is not None and operator_action_outcome_record(
            action_id=action_id, order_id=order.pk, outcome="applied", detail=detail,
        ):
            recorded_action = action_id
        saga_event_record(order, kind=SagaEvent.Kind.FINISHED, step="ship", detail=detail, key=key,
                          operator_action_id=recorded_action,
                          status=OrderStatus.DELIVERED if outcome == DeliveryOutcome.DELIVERED else None)
    return True


def _lost_parcel_refund(order: Order, *, action_id: int | None) -> str | None:
    """A parcel staff reported lost: the customer gets back what is still theirs through the
    returns side's refund saga (its own gateway key, under the order's refund ceiling), in
    the same transaction as the tracking's end, so neither happens without the other. If
    that is refused (nothing left to refund), a refund-due follow-up asks staff instead.
    Returns the timeline's wording, or None when it fell back to the follow-up."""
    order.refresh_from_db(fields=["charged_total", "refunded_total", "refund_pending_total"])
    owed = order.charged_total - order.refunded_total - order.refund_pending_total
    actor = (OperatorAction.objects.select_related("actor").get(pk=action_id).actor
             if action_id is not None else None)
    try:
        if owed <= 0:
            raise ReturnNotAllowed(f"nothing left to refund on {order.number}")
        refund = refund_open(order_id=order.pk, amount=owed, actor=actor,
                             reason="Parcel reported lost by staff: the customer is refunded")
    except ReturnNotAllowed as refused:
        kind, reason = _LOST_FOLLOWUP[DeliveryOutcome.LOST_REFUND]
        followup_create(order, kind=kind, reason=f"{reason} The automatic refund was refused: {refused}")
        return None
    return f"Reported lost by staff; refund #{refund.pk} of {owed} {order.currency} started"


def delivery_followup_open(*, order_id: int, kind: str, reason: str, key: str) -> FollowUp:
    """Put a delivery problem (overdue, failed) on the follow-up queue, once per key, with
    its event on the ship track. Locks: the order row."""
    if kind not in DELIVERY_FOLLOWUP_KINDS:
        raise ValueError(f"{kind!r} is not a delivery follow-up")
    with transaction.atomic():
        order = lock_order(order_id)
        followup = followup_create(order, kind=kind, reason=reason)
        saga_event_record(order, kind=SagaEvent.Kind.FOLLOWUP, step="ship", detail=reason, key=key)
    return followup


# --- the customer's emails about the parcel ----------------------------------------------

_EMAILS = {
    "shipped": ("Your order {number} has shipped", "orders/email/order_shipped.txt"),
    "delivered": ("Your order {number} has been delivered", "orders/email/order_delivered.txt"),
}


def delivery_email_key(order: Order, outcome: str) -> str:
    """One message per saga and outcome, like the confirmation: `order-42-k3Xf...:notify:shipped`."""
    return notification_key(f"{order.workflow_id}:notify", outcome)


def customer_delivery_notify(*, order_id: int, outcome: str, attempt: int = 1) -> str:
    """Email the customer that the parcel shipped (with its tracking number) or arrived,
    once per order and outcome whatever the retries (customer_message_send: our ledger, then
    the notifier's book, then a send). Raises NotificationFailed. Locks: the order row.
    """
    if outcome not in _EMAILS:
        raise ValueError(f"no delivery email for {outcome!r}")
    order = Order.objects.get(pk=order_id)
    subject, template = _EMAILS[outcome]
    shipment = Shipment.objects.filter(order=order).first()
    return customer_message_send(
        order_id=order_id, key=delivery_email_key(order, outcome), attempt=attempt,
        subject=subject.format(number=order.number), template=template,
        context={"tracking_number": shipment.tracking_number if shipment else ""}, step="ship",
    )
