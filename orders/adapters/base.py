"""Interfaces of the external systems the saga talks to.

Every money- or parcel-moving call carries an idempotency key; a gateway or carrier
must return the earlier result for a key it has seen, as real ones (Stripe, Adyen) do.
Errors are the domain errors of orders.errors: GatewayUnavailable is retried,
PaymentDeclined, RefundRefused, ShippingRejected and CancelRefused are not.

A call can act and still fail to answer (a timeout, a lost response, our worker killed
before our commit). So each adapter can also be asked what it did under a key, one key or
many at once (the lookups): a step or a compensation whose outcome is unknown asks before
it acts again or records "nothing to undo", and reconciliation compares our ledger with
these books. A lookup raises GatewayUnavailable when the other side cannot be asked.
"""

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol, TypeVar

from ..addresses import ShippingAddress
from ..errors import GatewayUnavailable


@dataclass(frozen=True)
class ChargeRequest:
    idempotency_key: str
    order_id: int
    amount: Decimal
    currency: str
    customer_email: str


@dataclass(frozen=True)
class RefundRequest:
    idempotency_key: str
    order_id: int
    charge_reference: str
    amount: Decimal
    currency: str


@dataclass(frozen=True)
class GatewayReceipt:
    reference: str


@dataclass(frozen=True)
class GatewayRecord:
    """What the gateway holds under one idempotency key (Stripe: the object an idempotent
    request created; Adyen: the payment or refund of that reference)."""

    idempotency_key: str
    kind: str  # "charge" or "refund"
    reference: str
    amount: Decimal
    currency: str

    @property
    def receipt(self) -> GatewayReceipt:
        return GatewayReceipt(reference=self.reference)


class PaymentGateway(Protocol):
    def charge(self, request: ChargeRequest) -> GatewayReceipt: ...

    def refund(self, request: RefundRequest) -> GatewayReceipt: ...

    def charge_lookup(self, idempotency_key: str) -> GatewayRecord | None:
        """The charge the gateway booked under this key, or None if it booked none."""
        ...

    def refund_lookup(self, idempotency_key: str) -> GatewayRecord | None:
        """The refund the gateway booked under this key, or None if it booked none."""
        ...

    def payments_lookup(self, idempotency_keys: list[str]) -> dict[str, GatewayRecord]:
        """Charges and refunds booked under any of these keys (reconciliation: in batches)."""
        ...


@dataclass(frozen=True)
class CarrierBooking:
    """What the carrier holds under one shipment key: the parcels booked, and which of
    them were cancelled."""

    shipment_key: str
    parcels: tuple[int, ...]
    cancelled: tuple[int, ...] = ()

    @property
    def active(self) -> tuple[int, ...]:
        """Parcels booked and not cancelled: labels the carrier will still pick up."""
        return tuple(p for p in self.parcels if p not in self.cancelled)


class Carrier(Protocol):
    def book_parcel(self, *, order_id: int, shipment_key: str, parcel_number: int,
                    address: ShippingAddress | None = None) -> str:
        """Book one parcel to `address` (None: orders from before addresses, the carrier's
        account default). Raises ShippingRejected for an address it cannot serve."""
        ...

    def cancel(self, *, order_id: int, shipment_key: str) -> None:
        """Cancel every parcel booked under the key (none booked: nothing happens)."""
        ...

    def shipment_lookup(self, shipment_key: str) -> CarrierBooking | None:
        """What the carrier booked under this key, or None if it booked nothing."""
        ...

    def shipments_lookup(self, shipment_keys: list[str]) -> dict[str, CarrierBooking]:
        """Bookings under any of these keys (reconciliation: in batches)."""
        ...

    def is_delivered(self, *, order_id: int, shipment_key: str) -> bool: ...


@dataclass(frozen=True)
class Notification:
    order_id: int
    to: str
    subject: str
    body: str
    # One message per saga, step and outcome (`order-42:notify:confirmed`); also the
    # email's Message-ID (see message_id_header), so a mail provider can dedupe by it.
    idempotency_key: str


class CustomerNotifier(Protocol):
    """Sends once per key: a notifier asked to send a key it already sent does nothing."""

    def send(self, notification: Notification) -> None: ...

    def sent_lookup(self, idempotency_key: str) -> bool:
        """Did a message with this key certainly go out (an earlier attempt whose answer we lost)?"""
        ...


def message_id_header(idempotency_key: str, sender: str) -> str:
    """The RFC 5322 Message-ID for a notification key, on the sender's domain.

    A key's colons are not allowed left of the @, so they become dots (keys contain no dots).
    """
    domain = sender.rpartition("@")[2] or "localhost"
    return f"<{idempotency_key.replace(':', '.')}@{domain}>"


Found = TypeVar("Found")


def lookup_after_failure(lookup: Callable[[str], Found | None], key: str) -> Found | None:
    """Ask the outside party what it did under a key after a call to it failed (its answer
    may have been lost after the effect); None if it did nothing or cannot say right now."""
    try:
        return lookup(key)
    except GatewayUnavailable:
        return None
