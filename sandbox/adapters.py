"""A payment gateway, a carrier and a mailer that run in-process and keep books in our database.

They behave like the real thing where the saga cares: idempotent by key, slow when told
(latency_ms), and failing on demand (the per-order plans of orders.faults): declines,
transient errors N times per key, a whole-service outage until cleared, a crash midway
through shipping, an answer lost after the effect (lost_response), a refund or a cancel
refused. Like Stripe or Adyen they can be asked what they did under a key (the lookups,
read from their own books; the outage switch stops the calls that act, not the lookups).
Settings point PAYMENT_GATEWAY, SHIPPING_CARRIER and CUSTOMER_NOTIFIER here only when
SANDBOX_ENABLED is on.
"""

import logging
import time
import uuid

from django.conf import settings
from django.core.mail import EmailMessage
from django.db import IntegrityError, transaction
from django.db.models import F

from orders.addresses import ShippingAddress
from orders.adapters.base import (
    CarrierBooking,
    ChargeRequest,
    GatewayReceipt,
    GatewayRecord,
    Notification,
    RefundRequest,
    message_id_header,
)
from orders.errors import (
    CancelRefused,
    GatewayUnavailable,
    NotificationFailed,
    PaymentDeclined,
    RefundRefused,
    ShippingRejected,
)
from orders.faults import Fault, fault_for, latency_ms
from orders.models import Order

from .models import OUTAGE_SERVICES, SandboxEmail, SandboxGatewayCall, SandboxOutage, SandboxParcel, SandboxPaymentRecord

logger = logging.getLogger(__name__)


def sandbox_outage_set(service: str, *, active: bool) -> None:
    """Switch a whole sandbox service off ("fail until cleared") or back on."""
    if service not in OUTAGE_SERVICES:
        raise ValueError(f"unknown sandbox service {service!r}; outages apply to {', '.join(OUTAGE_SERVICES)}")
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


def order_fault_plan(order_id: int) -> dict:
    return Order.objects.values_list("fault_plan", flat=True).get(pk=order_id) or {}


def _simulate_conditions(service: str, key: str, plan: dict) -> Fault:
    """Apply latency and failures that hit any call; returns the fault left to the caller."""
    _delay_or_outage(service, plan)
    fault = fault_for(plan, service)
    if fault.kind == "transient":
        sandbox_fail_transiently(service, key, fault.count, GatewayUnavailable)
    return fault


def _delay_or_outage(service: str, plan: dict) -> None:
    delay = latency_ms(plan)
    if delay:
        time.sleep(delay / 1000)
    if SandboxOutage.objects.filter(service=service, active=True).exists():
        raise GatewayUnavailable(f"{service} service unavailable (sandbox outage)")


def _undo_faults(service: str, key: str, plan: dict, refusal: type[Exception], message: str) -> None:
    """Faults of an undo (refund, shipment cancel): "fail" refuses every call while the plan
    says so; "transient:N" times out N calls per key, then works."""
    fault = fault_for(plan, service)
    if fault.kind == "fail":
        raise refusal(message)
    if fault.kind == "transient":
        sandbox_fail_transiently(service, key, fault.count, GatewayUnavailable)


def _lose_answer(service: str, key: str, fault: Fault, what: str) -> None:
    """lost_response:N: the effect is booked, then the caller hears a timeout, N calls per key."""
    if fault.kind != "lost_response":
        return
    calls = sandbox_call_count(f"{service}-lost", key)
    if calls <= fault.count:
        raise GatewayUnavailable(f"{service} timed out after it {what} (sandbox fault: answer lost, "
                                 f"call {calls} of {fault.count})")


class SandboxPaymentGateway:
    def charge(self, request: ChargeRequest) -> GatewayReceipt:
        fault = _simulate_conditions("payment", request.idempotency_key, order_fault_plan(request.order_id))
        if fault.kind == "decline":
            raise PaymentDeclined(f"card declined for {request.customer_email} (sandbox fault)")
        receipt = self._book(request.idempotency_key, "charge", request.amount, request.currency)
        _lose_answer("payment", request.idempotency_key, fault, "booked the charge")
        return receipt

    def refund(self, request: RefundRequest) -> GatewayReceipt:
        plan = order_fault_plan(request.order_id)
        # A declining card or a flaky charge must not make refunds fail too: the payment
        # fault applies only when it loses answers; refunds have faults of their own.
        _delay_or_outage("payment", plan)
        _undo_faults("refund", request.idempotency_key, plan, RefundRefused,
                     "gateway refused the refund: the charge is disputed (sandbox fault)")
        existing = SandboxPaymentRecord.objects.filter(idempotency_key=request.idempotency_key).first()
        if existing is None:
            self._refundable_check(request)
        receipt = self._book(request.idempotency_key, "refund", request.amount, request.currency,
                             charge_reference=request.charge_reference)
        _lose_answer("payment", request.idempotency_key, fault_for(plan, "payment"), "booked the refund")
        return receipt

    @staticmethod
    def _refundable_check(request: RefundRequest) -> None:
        """As a real gateway: no refund of a charge it does not know, nor beyond what it took."""
        charge = SandboxPaymentRecord.objects.filter(reference=request.charge_reference, kind="charge").first()
        if charge is None:
            raise RefundRefused(f"gateway knows no charge {request.charge_reference!r} to refund (sandbox)")
        refunded = sum(SandboxPaymentRecord.objects.filter(kind="refund", charge_reference=charge.reference)
                       .values_list("amount", flat=True))
        if refunded + request.amount > charge.amount:
            raise RefundRefused(f"refund of {request.amount} exceeds what is left of charge {charge.reference} "
                                f"({charge.amount - refunded}) (sandbox)")

    def charge_lookup(self, idempotency_key: str) -> GatewayRecord | None:
        return self._lookup(idempotency_key, "charge")

    def refund_lookup(self, idempotency_key: str) -> GatewayRecord | None:
        return self._lookup(idempotency_key, "refund")

    def payments_lookup(self, idempotency_keys: list[str]) -> dict[str, GatewayRecord]:
        return {
            record.idempotency_key: _gateway_record(record)
            for record in SandboxPaymentRecord.objects.filter(idempotency_key__in=list(idempotency_keys))
        }

    @staticmethod
    def _lookup(key: str, kind: str) -> GatewayRecord | None:
        record = SandboxPaymentRecord.objects.filter(idempotency_key=key, kind=kind).first()
        return _gateway_record(record) if record else None

    @staticmethod
    def _book(key: str, kind: str, amount, currency: str, charge_reference: str = "") -> GatewayReceipt:
        record, _ = SandboxPaymentRecord.objects.get_or_create(
            idempotency_key=key,
            defaults={"kind": kind, "amount": amount, "currency": currency, "charge_reference": charge_reference,
                      "reference": f"sbx_{uuid.uuid4().hex[:20]}"},
        )
        return GatewayReceipt(reference=record.reference)


def _gateway_record(record: SandboxPaymentRecord) -> GatewayRecord:
    return GatewayRecord(idempotency_key=record.idempotency_key, kind=record.kind, reference=record.reference,
                         amount=record.amount, currency=record.currency)


# Where the sandbox carrier delivers: Europe. An address elsewhere is refused at booking,
# as a real carrier refuses what its network does not reach.
SANDBOX_CARRIER_COUNTRIES = frozenset(
    {"AT", "BE", "CH", "DE", "DK", "ES", "FI", "FR", "GB", "IE", "IT", "LU", "NL", "NO", "PL", "PT", "SE"}
)


class SandboxCarrier:
    def book_parcel(self, *, order_id: int, shipment_key: str, parcel_number: int,
                    address: ShippingAddress | None = None) -> str:
        plan = order_fault_plan(order_id)
        fault = _simulate_conditions("shipping", shipment_key, plan)
        if fault.kind == "fail":
            raise ShippingRejected("carrier refused the shipment: address not serviceable (sandbox fault)")
        if address is not None and address.country not in SANDBOX_CARRIER_COUNTRIES:
            raise ShippingRejected(f"carrier refused the shipment: address not serviceable "
                                   f"(the sandbox carrier does not deliver to {address.country})")
        if fault.kind == "crash_after" and parcel_number == fault.count + 1:
            # Once only: the connection drops midway, as a worker crash would.
            if sandbox_call_count("shipping-crash", shipment_key) == 1:
                raise GatewayUnavailable(f"carrier connection reset after {fault.count} parcels (sandbox fault)")
        # Every booking call is counted, so tests can prove a parcel is never booked twice.
        sandbox_call_count("carrier-book", f"{shipment_key}#{parcel_number}")
        parcel, _ = SandboxParcel.objects.get_or_create(shipment_key=shipment_key, parcel_number=parcel_number)
        _lose_answer("shipping", shipment_key, fault, f"booked parcel {parcel_number}")
        return f"{shipment_key}#{parcel.parcel_number}"

    def cancel(self, *, order_id: int, shipment_key: str) -> None:
        plan = order_fault_plan(order_id)
        _delay_or_outage("shipping", plan)
        _undo_faults("shipping_cancel", shipment_key + ":cancel", plan, CancelRefused,
                     "carrier refused to cancel the shipment: already handed over (sandbox fault)")
        SandboxParcel.objects.filter(shipment_key=shipment_key).update(cancelled=True)
        _lose_answer("shipping", shipment_key + ":cancel", fault_for(plan, "shipping"), "cancelled the parcels")

    def shipment_lookup(self, shipment_key: str) -> CarrierBooking | None:
        return self.shipments_lookup([shipment_key]).get(shipment_key)

    def shipments_lookup(self, shipment_keys: list[str]) -> dict[str, CarrierBooking]:
        parcels: dict[str, list[tuple[int, bool]]] = {}
        for key, number, cancelled in (
            SandboxParcel.objects.filter(shipment_key__in=list(shipment_keys)).order_by("shipment_key", "parcel_number")
            .values_list("shipment_key", "parcel_number", "cancelled")
        ):
            parcels.setdefault(key, []).append((number, cancelled))
        return {
            key: CarrierBooking(shipment_key=key, parcels=tuple(n for n, _ in booked),
                                cancelled=tuple(n for n, c in booked if c))
            for key, booked in parcels.items()
        }

    def is_delivered(self, *, order_id: int, shipment_key: str) -> bool:
        # The sandbox carrier never reports delivery by itself: staff or a webhook do.
        return False


class SandboxNotifier:
    """A mail provider that dedupes by idempotency key, as provider APIs that take one do,
    behind the order's notify fault (fail, or transient:N).

    Its book (SandboxEmail) is what it sent: a key is sent once, whatever we ask, and
    `sent_lookup` answers from the book, so a notify step whose answer was lost finds out.
    A copy of each message also goes through Django's email backend (the console in dev,
    the outbox in tests) for people to read; the book, not that copy, is what counts as sent.
    """

    def send(self, notification: Notification) -> None:
        fault = fault_for(order_fault_plan(notification.order_id), "notify")
        if fault.kind == "fail":
            raise NotificationFailed(f"mail server refused the message to {notification.to} (sandbox fault)")
        if fault.kind == "transient":
            sandbox_fail_transiently(
                # Per message: the tracker's shipped email does not use up the confirmation's failures.
                "notify", notification.idempotency_key, fault.count, NotificationFailed
            )
        key = notification.idempotency_key
        try:
            with transaction.atomic():
                SandboxEmail.objects.create(
                    message_id=key, to=notification.to, subject=notification.subject[:300], body=notification.body
                )
        except IntegrityError:
            return  # sent before: a provider that dedupes sends nothing again
        sender = settings.DEFAULT_FROM_EMAIL
        try:
            EmailMessage(
                notification.subject, notification.body, sender, [notification.to],
                headers={"Message-ID": message_id_header(key, sender)},
            ).send(fail_silently=False)
        except Exception:
            logger.warning("sandbox mailer: could not show the copy of %s", key, exc_info=True)

    def sent_lookup(self, idempotency_key: str) -> bool:
        return SandboxEmail.objects.filter(message_id=idempotency_key).exists()
