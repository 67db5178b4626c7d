"""Arranging shipping parcel by parcel, cancelling it, and marking it delivered.

The carrier is outside our transaction: a booking or a cancel can happen and its answer be
lost. Both ask the carrier what it holds under the shipment key (shipment_lookup) before
they raise, and the cancel asks before it declares "nothing to cancel".
"""

from collections.abc import Callable

from django.db import transaction
from django.utils import timezone

from ..addresses import order_shipping_address
from ..adapters import shipping_carrier
from ..adapters.base import Carrier, lookup_after_failure
from ..crashpoints import crash_point
from ..errors import GatewayUnavailable
from ..locks import lock_order
from ..models import Order, SagaEvent, Shipment
from ..status import OrderStatus
from .events import saga_event_record


def shipment_arrange(
    *, order_id: int, idempotency_key: str, attempt: int, resume_after: int,
    on_parcel_booked: Callable[[int], None],
) -> str:
    """Book one parcel per order line with the carrier, reporting each as it is booked.

    `resume_after` is the last parcel a previous attempt reported (its heartbeat), so a
    retried attempt continues where the crashed one stopped instead of starting over.
    Raises ShippingRejected or GatewayUnavailable.
    """
    order = Order.objects.get(pk=order_id)
    parcels = order.lines.count()
    shipment, _ = Shipment.objects.get_or_create(
        order=order, defaults={"idempotency_key": idempotency_key, "parcels_total": parcels}
    )
    if shipment.state == Shipment.State.BOOKED:
        return "already booked"
    carrier = shipping_carrier()
    address = order_shipping_address(order)
    for number in range(resume_after + 1, parcels + 1):
        try:
            carrier.book_parcel(order_id=order_id, shipment_key=idempotency_key, parcel_number=number,
                                address=address)
        except GatewayUnavailable:
            booking = lookup_after_failure(carrier.shipment_lookup, idempotency_key)
            if booking is None or number not in booking.active:
                raise  # not booked (or the carrier cannot say): the step is retried
        crash_point("ship.after_booking", order=order_id)
        Shipment.objects.filter(pk=shipment.pk).update(parcels_booked=number)
        on_parcel_booked(number)
    with transaction.atomic():
        order = lock_order(order_id)
        shipment.state = Shipment.State.BOOKED
        shipment.parcels_booked = parcels
        shipment.carrier_reference = idempotency_key
        shipment.save(update_fields=["state", "parcels_booked", "carrier_reference", "updated_at"])
        resumed = f", resumed after parcel {resume_after}" if resume_after else ""
        detail = f"Booked {parcels} parcel(s) with the carrier{resumed}"
        saga_event_record(order, kind=SagaEvent.Kind.SUCCEEDED, step="ship", detail=detail, attempt=attempt)
    return detail


def shipment_cancel(*, order_id: int, attempt: int, shipment_key: str = "") -> str:
    """Compensation of ship: cancel whatever the carrier booked, if anything.

    Without a shipment row of ours the carrier is asked what it booked under the key
    (`shipment_key`, else derived from the order's workflow id as the saga derives it):
    what it holds is cancelled and recorded; "nothing to cancel" only when it agrees.
    Raises GatewayUnavailable (retried) or CancelRefused (the compensation cannot
    complete without staff).
    """
    shipment = Shipment.objects.filter(order_id=order_id).first()
    carrier = shipping_carrier()
    if shipment is None:
        key = shipment_key or f"{Order.objects.values_list('workflow_id', flat=True).get(pk=order_id)}:ship"
        booking = carrier.shipment_lookup(key)  # cannot ask: GatewayUnavailable, retried
        if booking is not None and booking.active:
            _cancel(carrier, order_id, key)
        with transaction.atomic():
            order = lock_order(order_id)
            if booking is None or not booking.active:
                detail = "Nothing was booked (the carrier confirms it); nothing to cancel"
            else:
                Shipment.objects.get_or_create(order=order, defaults={
                    "idempotency_key": key, "state": Shipment.State.CANCELLED, "carrier_reference": key,
                    "parcels_total": len(booking.parcels), "parcels_booked": len(booking.parcels),
                })
                detail = (f"Cancelled {len(booking.active)} parcel(s) found at the carrier under {key}: "
                          "its answer had been lost")
            saga_event_record(order, kind=SagaEvent.Kind.COMPENSATED, step="ship", detail=detail, attempt=attempt)
        return detail
    if shipment.state != Shipment.State.CANCELLED:
        _cancel(carrier, order_id, shipment.idempotency_key)
    booking = lookup_after_failure(carrier.shipment_lookup, shipment.idempotency_key)
    # The carrier's count, when it can say: a booking whose answer was lost is cancelled too.
    booked = max(shipment.parcels_booked, len(booking.parcels) if booking else 0)
    with transaction.atomic():
        order = lock_order(order_id)
        Shipment.objects.filter(pk=shipment.pk).update(
            state=Shipment.State.CANCELLED, parcels_booked=booked, updated_at=timezone.now())
        detail = (f"Cancelled shipment ({booked} parcel(s) booked)" if booked
                  else "Nothing was booked (the carrier booked no parcel); nothing to cancel")
        saga_event_record(order, kind=SagaEvent.Kind.COMPENSATED, step="ship", detail=detail, attempt=attempt)
    return detail


def _cancel(carrier: Carrier, order_id: int, key: str) -> None:
    """Cancel at the carrier; a cancel whose answer was lost counts when the carrier shows it."""
    try:
        carrier.cancel(order_id=order_id, shipment_key=key)
    except GatewayUnavailable:
        booking = lookup_after_failure(carrier.shipment_lookup, key)
        if booking is None or booking.active:
            raise



def shipment_is_delivered(*, order_id: int) -> bool:
    shipment = Shipment.objects.get(order_id=order_id)
    if shipment.state == Shipment.State.DELIVERED:
        return True
    return shipping_carrier().is_delivered(order_id=order_id, shipment_key=shipment.idempotency_key)


def shipment_mark_delivered(*, order_id: int, source: str) -> None:
    """The parcel arrived (carrier webhook or staff). Idempotent."""
    with transaction.atomic():
        order = lock_order(order_id)
        if order.status == OrderStatus.DELIVERED:
            return
        now = timezone.now()
        # The tracker that calls this (trackers from before "tracker-ends") ends right after.
        Shipment.objects.filter(order=order).update(state=Shipment.State.DELIVERED, delivered_at=now,
                                                    tracking_ended_at=now)
        saga_event_record(order, kind=SagaEvent.Kind.FINISHED, step="ship", detail=f"Delivered (reported by {source})",
                          status=OrderStatus.DELIVERED)
