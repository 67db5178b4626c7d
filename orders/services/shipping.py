"""Arranging shipping parcel by parcel, cancelling it, and marking it delivered."""

from collections.abc import Callable

from django.db import transaction
from django.utils import timezone

from ..adapters import shipping_carrier
from ..crashpoints import crash_point
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
    for number in range(resume_after + 1, parcels + 1):
        carrier.book_parcel(order_id=order_id, shipment_key=idempotency_key, parcel_number=number)
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


def shipment_cancel(*, order_id: int, attempt: int) -> str:
    """Compensation of ship: cancel whatever the carrier booked, if anything."""
    shipment = Shipment.objects.filter(order_id=order_id).first()
    if shipment is not None and shipment.state != Shipment.State.CANCELLED:
        shipping_carrier().cancel(order_id=order_id, shipment_key=shipment.idempotency_key)
    with transaction.atomic():
        order = lock_order(order_id)
        if shipment is None:
            detail = "Nothing was booked; nothing to cancel"
        else:
            Shipment.objects.filter(pk=shipment.pk).update(state=Shipment.State.CANCELLED, updated_at=timezone.now())
            detail = f"Cancelled shipment ({shipment.parcels_booked} parcel(s) booked)"
        saga_event_record(order, kind=SagaEvent.Kind.COMPENSATED, step="ship", detail=detail, attempt=attempt)
    return detail


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
        Shipment.objects.filter(order=order).update(state=Shipment.State.DELIVERED, delivered_at=timezone.now())
        saga_event_record(order, kind=SagaEvent.Kind.FINISHED, step="ship", detail=f"Delivered (reported by {source})",
                          status=OrderStatus.DELIVERED)
