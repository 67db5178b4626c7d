"""Charging and refunding through the payment gateway, recorded in the Payment ledger.

The gateway call happens outside our transaction (it is another system); the ledger row
and its event are written together after it. Both sides dedupe by the idempotency key,
so a crash between the two is healed by the retry: the gateway returns the same receipt.
"""

from django.db import IntegrityError, transaction

from ..adapters import payment_gateway
from ..adapters.base import ChargeRequest, RefundRequest
from ..crashpoints import crash_point
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
            saga_event_record(order, kind=event_kind, step="charge", detail=detail, attempt=attempt)
    except IntegrityError:
        # Another attempt recorded this key first: the money moved once, which is the point.
        if not Payment.objects.filter(idempotency_key=key).exists():
            raise


def payment_charge(*, order_id: int, idempotency_key: str, attempt: int) -> str:
    """Charge the order's total once. Raises PaymentDeclined or GatewayUnavailable."""
    if Payment.objects.filter(idempotency_key=idempotency_key).exists():
        return "already charged"
    order = Order.objects.get(pk=order_id)
    receipt = payment_gateway().charge(
        ChargeRequest(
            idempotency_key=idempotency_key, order_id=order.pk, amount=order.total,
            currency=order.currency, customer_email=order.customer_email,
        )
    )
    crash_point("charge.after_gateway", order=order_id)
    detail = f"Charged {order.total} {order.currency} ({receipt.reference})"
    _record(order.pk, kind=Payment.Kind.CHARGE, key=idempotency_key, amount=order.total,
            currency=order.currency, reference=receipt.reference,
            event_kind=SagaEvent.Kind.SUCCEEDED, detail=detail, attempt=attempt)
    crash_point("charge.after_commit", order=order_id)
    return detail


def payment_refund(*, order_id: int, charge_key: str, idempotency_key: str, attempt: int) -> str:
    """Compensation of charge: refund what the charge took, once. Nothing charged, nothing refunded."""
    if Payment.objects.filter(idempotency_key=idempotency_key).exists():
        return "already refunded"
    charge = Payment.objects.filter(idempotency_key=charge_key, kind=Payment.Kind.CHARGE).first()
    if charge is None:
        with transaction.atomic():
            order = lock_order(order_id)
            saga_event_record(order, kind=SagaEvent.Kind.COMPENSATED, step="charge",
                              detail="Nothing was charged; nothing to refund", attempt=attempt)
        return "nothing to refund"
    receipt = payment_gateway().refund(
        RefundRequest(
            idempotency_key=idempotency_key, order_id=order_id, charge_reference=charge.gateway_reference,
            amount=charge.amount, currency=charge.currency,
        )
    )
    crash_point("refund.after_gateway", order=order_id)
    detail = f"Refunded {charge.amount} {charge.currency} ({receipt.reference})"
    _record(order_id, kind=Payment.Kind.REFUND, key=idempotency_key, amount=charge.amount,
            currency=charge.currency, reference=receipt.reference,
            event_kind=SagaEvent.Kind.COMPENSATED, detail=detail, attempt=attempt)
    crash_point("refund.after_commit", order=order_id)
    return detail
