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


class CustomerNotifier(Protocol):
    def send(self, notification: Notification) -> None: ...
