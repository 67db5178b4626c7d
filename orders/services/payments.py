"""Charging and refunding through the payment gateway, recorded in the Payment ledger.

The gateway call happens outside our transaction (it is another system); the ledger row
and its event are written together after it. Both sides dedupe by the idempotency key,
so a crash between the two is healed by the retry: the gateway returns the same receipt.
When the gateway's answer is lost, or the saga moved on before our row was written, the
gateway is asked what it holds under the key (charge_lookup, refund_lookup): our ledger
follows the gateway's books, never our guess.
"""


from django.db import IntegrityError, transaction
from django.db.models import F

from ..adapters import payment_gateway
from ..adapters.base import ChargeRequest, RefundRequest, lookup_after_failure
from ..crashpoints import crash_point
from ..errors import GatewayUnavailable
from ..locks import lock_order
from ..models import Order, Payment, SagaEvent
from .events import saga_event_record


def _record(order_id: int, *, kind: str, key: str, amount, currency: str, reference: str,
            event_kind: str, detail: str, attempt: int) -> None:
    try:
        with transaction.atomic():
            order = lock_order(order_id)
            Payment.objects.create(
                order=order, kind=kind, amount=amount, currency=currency,
                idempotency_key=key, gateway_reference=reference,
            )
            # The order's books (charged, refunded) move with the ledger; refunds of returns
            # keep them in orders.services.returns.
            books = {"charged_total": F("charged_total") + amount} if kind == Payment.Kind.CHARGE \
                else {"refunded_total": F("refunded_total") + amount}
            Order.objects.filter(pk=order.pk).update(**books)
            saga_event_record(order, kind=event_kind, step="charge", detail=detail, attempt=attempt)
    except IntegrityError:
        # Another attempt recorded this key first: the money moved once, which is the point.
        if not Payment.objects.filter(idempotency_key=key).exists():
            raise


def payment_charge(*, order_id: int, idempotency_key: str, attempt: int) -> str:
    """Charge the order's total once. Raises PaymentDeclined or GatewayUnavailable.

    A gateway can act and still not answer (a timeout after the effect): before raising
    GatewayUnavailable this asks the gateway what it holds under the key, and records the
    charge it booked, so the saga moves on knowing the money was taken.
    """
    if Payment.objects.filter(idempotency_key=idempotency_key).exists():
        return "already charged"
    order = Order.objects.get(pk=order_id)
    gateway = payment_gateway()
    try:
        receipt = gateway.charge(
            ChargeRequest(
                idempotency_key=idempotency_key, order_id=order.pk, amount=order.total,
                currency=order.currency, customer_email=order.customer_email,
            )
        )
    except GatewayUnavailable:
        booked = lookup_after_failure(gateway.charge_lookup, idempotency_key)
        if booked is None:
            raise  # the gateway did not act (or cannot say): the step is retried
        detail = (f"Charged {booked.amount} {booked.currency} ({booked.reference}): the gateway's answer was lost, "
                  "found by looking the charge up")
        _record(order.pk, kind=Payment.Kind.CHARGE, key=idempotency_key, amount=booked.amount,
                currency=booked.currency, reference=booked.reference,
                event_kind=SagaEvent.Kind.SUCCEEDED, detail=detail, attempt=attempt)
        return detail
    crash_point("charge.after_gateway", order=order_id)
    detail = f"Charged {order.total} {order.currency} ({receipt.reference})"
    _record(order.pk, kind=Payment.Kind.CHARGE, key=idempotency_key, amount=order.total,
            currency=order.currency, reference=receipt.reference,
            event_kind=SagaEvent.Kind.SUCCEEDED, detail=detail, attempt=attempt)
    crash_point("charge.after_commit", order=order_id)
    return detail


def payment_refund(*, order_id: int, charge_key: str, idempotency_key: str, attempt: int) -> str:
    """Compensation of charge: refund what the charge took, once.

    When our ledger has no charge, the gateway may still have booked one whose answer was
    lost (a timeout after the effect, our worker killed before our commit): ask it. A
    charge it holds is recorded in our ledger (its event says where it came from) and
    refunded; "nothing to refund" only when the gateway agrees nothing was charged. A
    refund whose answer is lost is found the same way. Raises GatewayUnavailable
    (retried) or RefundRefused (the compensation cannot complete without staff).
    """
    if Payment.objects.filter(idempotency_key=idempotency_key).exists():
        return "already refunded"
    gateway = payment_gateway()
    charge = Payment.objects.filter(idempotency_key=charge_key, kind=Payment.Kind.CHARGE).first()
    if charge is None:
        booked = gateway.charge_lookup(charge_key)  # cannot ask: GatewayUnavailable, retried
        if booked is None:
            with transaction.atomic():
                order = lock_order(order_id)
                saga_event_record(order, kind=SagaEvent.Kind.COMPENSATED, step="charge",
                                  detail="Nothing was charged (the gateway confirms it); nothing to refund",
                                  attempt=attempt)
            return "nothing to refund"
        _record(order_id, kind=Payment.Kind.CHARGE, key=charge_key, amount=booked.amount, currency=booked.currency,
                reference=booked.reference, event_kind=SagaEvent.Kind.SUCCEEDED, attempt=attempt,
                detail=(f"Charged {booked.amount} {booked.currency} ({booked.reference}): found at the gateway, "
                        "whose answer had been lost; recorded now, to be refunded"))
        charge = Payment.objects.get(idempotency_key=charge_key)
    try:
        receipt = gateway.refund(
            RefundRequest(
                idempotency_key=idempotency_key, order_id=order_id, charge_reference=charge.gateway_reference,
                amount=charge.amount, currency=charge.currency,
            )
        )
        lost = ""
    except GatewayUnavailable:
        booked = lookup_after_failure(gateway.refund_lookup, idempotency_key)
        if booked is None:
            raise
        receipt, lost = booked.receipt, ": the gateway's answer was lost, found by looking the refund up"
    crash_point("refund.after_gateway", order=order_id)
    detail = f"Refunded {charge.amount} {charge.currency} ({receipt.reference}){lost}"
    _record(order_id, kind=Payment.Kind.REFUND, key=idempotency_key, amount=charge.amount,
            currency=charge.currency, reference=receipt.reference,
            event_kind=SagaEvent.Kind.COMPENSATED, detail=detail, attempt=attempt)
    crash_point("refund.after_commit", order=order_id)
    return detail

