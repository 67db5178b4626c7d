"""A payment gateway and a carrier that run in-process and keep books in our database.

They behave like the real thing where the saga cares: idempotent by key, slow when told
(latency_ms), and failing on demand (see orders.faults): declines, transient errors
N times per key, a whole-service outage until cleared, a crash midway through shipping.
"""

import time
import uuid

from django.db import IntegrityError, transaction
from django.db.models import F

from ..errors import GatewayUnavailable, PaymentDeclined, ShippingRejected
from ..faults import Fault, fault_for, latency_ms, order_fault_plan
from ..models import SandboxGatewayCall, SandboxOutage, SandboxParcel, SandboxPaymentRecord
from .base import ChargeRequest, GatewayReceipt, RefundRequest


def sandbox_outage_set(service: str, *, active: bool) -> None:
    """Switch a whole sandbox service off ("fail until cleared") or back on."""
    SandboxOutage.objects.update_or_create(service=service, defaults={"active": active})


def sandbox_call_count(service: str, key: str) -> int:
    """Count one call to a sandbox service for a key; returns the calls so far, this one included."""
    with transaction.atomic():
        try:
            with transaction.atomic():
                SandboxGatewayCall.objects.create(service=service, idempotency_key=key, calls=1)
                return 1
        except IntegrityError:
            pass
        SandboxGatewayCall.objects.filter(service=service, idempotency_key=key).update(calls=F("calls") + 1)
        return SandboxGatewayCall.objects.get(service=service, idempotency_key=key).calls


def sandbox_fail_transiently(service: str, key: str, failures: int, error: type[Exception]) -> None:
    calls = sandbox_call_count(service, key)
    if calls <= failures:
        raise error(f"{service} unavailable: timed out (sandbox fault, call {calls} of {failures} failing)")


def _simulate_conditions(service: str, key: str, plan: dict) -> Fault:
    """Apply latency and failures that hit any call; returns the fault left to the caller."""
    delay = latency_ms(plan)
    if delay:
        time.sleep(delay / 1000)
    if SandboxOutage.objects.filter(service=service, active=True).exists():
        raise GatewayUnavailable(f"{service} service unavailable (sandbox outage)")
    fault = fault_for(plan, service)
    if fault.kind == "transient":
        sandbox_fail_transiently(service, key, fault.count, GatewayUnavailable)
    return fault


def _refuse_compensation(service: str, key: str, plan: dict, refusal: type[Exception], message: str) -> None:
    """Faults of an undo (refund, shipment cancel): "fail" refuses every call while the
    plan says so; "transient:N" times out N calls per key, then works."""
    fault = fault_for(plan, service)
    if fault.kind == "fail":
        raise refusal(message)
    if fault.kind == "transient":
        sandbox_fail_transiently(service, key, fault.count, GatewayUnavailable)


class SandboxPaymentGateway:
    def charge(self, request: ChargeRequest) -> GatewayReceipt:
        fault = _simulate_conditions("payment", request.idempotency_key, order_fault_plan(request.order_id))
        if fault.kind == "decline":
            raise PaymentDeclined(f"card declined for {request.customer_email} (sandbox fault)")
        return self._book(request.idempotency_key, "charge", request.amount, request.currency)

    def refund(self, request: RefundRequest) -> GatewayReceipt:
        plan = order_fault_plan(request.order_id)
        # A declining card must not make refunds fail too: only outages apply here.
        _simulate_conditions("payment", request.idempotency_key, {k: v for k, v in plan.items() if k != "payment"})
        _refuse_compensation("refund", request.idempotency_key, plan, GatewayUnavailable,
                             "gateway refused the refund (sandbox fault)")
        return self._book(request.idempotency_key, "refund", request.amount, request.currency)

    @staticmethod
    def _book(key: str, kind: str, amount, currency: str) -> GatewayReceipt:
        record, _ = SandboxPaymentRecord.objects.get_or_create(
            idempotency_key=key,
            defaults={"kind": kind, "amount": amount, "currency": currency, "reference": f"sbx_{uuid.uuid4().hex[:20]}"},
        )
        return GatewayReceipt(reference=record.reference)


class SandboxCarrier:
    def book_parcel(self, *, order_id: int, shipment_key: str, parcel_number: int) -> str:
        plan = order_fault_plan(order_id)
        fault = _simulate_conditions("shipping", shipment_key, plan)
        if fault.kind == "fail":
            raise ShippingRejected("carrier refused the shipment: address not serviceable (sandbox fault)")
        if fault.kind == "crash_after" and parcel_number == fault.count + 1:
            # Once only: the connection drops midway, as a worker crash would.
            if sandbox_call_count("shipping-crash", shipment_key) == 1:
                raise GatewayUnavailable(f"carrier connection reset after {fault.count} parcels (sandbox fault)")
        # Every booking call is counted, so tests can prove a parcel is never booked twice.
        sandbox_call_count("carrier-book", f"{shipment_key}#{parcel_number}")
        parcel, _ = SandboxParcel.objects.get_or_create(shipment_key=shipment_key, parcel_number=parcel_number)
        return f"{shipment_key}#{parcel.parcel_number}"

    def cancel(self, *, order_id: int, shipment_key: str) -> None:
        _simulate_conditions("shipping", shipment_key + ":cancel", {})
        _refuse_compensation("shipping_cancel", shipment_key + ":cancel", order_fault_plan(order_id), ShippingRejected,
                             "carrier refused to cancel the shipment: already handed over (sandbox fault)")
        SandboxParcel.objects.filter(shipment_key=shipment_key).update(cancelled=True)

    def is_delivered(self, *, order_id: int, shipment_key: str) -> bool:
        # The sandbox carrier never reports delivery by itself: staff or a webhook do.
        return False
