"""Interfaces of the external systems the saga talks to.

Every money- or parcel-moving call carries an idempotency key; a gateway or carrier
must return the earlier result for a key it has seen, as real ones (Stripe, Adyen) do.
Errors are the domain errors of orders.errors: GatewayUnavailable is retried,
PaymentDeclined and ShippingRejected are not.
"""

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol


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


class PaymentGateway(Protocol):
    def charge(self, request: ChargeRequest) -> GatewayReceipt: ...

    def refund(self, request: RefundRequest) -> GatewayReceipt: ...


class Carrier(Protocol):
    def book_parcel(self, *, order_id: int, shipment_key: str, parcel_number: int) -> str: ...

    def cancel(self, *, order_id: int, shipment_key: str) -> None: ...

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
