"""What a customer may know of their order: no errors, fault plans or internal ids.

The wording of the customer's page is orders.presenters'; this says what happened.
"""

import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from ..addresses import order_shipping_address
from ..adapters import payment_gateway
from ..errors import GatewayUnavailable
from ..models import Order, SagaEvent, Shipment
from ..status import OrderStatus, SagaStatus

Kind = SagaEvent.Kind

_PUBLIC_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what secrets.token_urlsafe makes


@dataclass
class CustomerLine:
    name: str
    quantity: int
    unit_price: Decimal
    line_total: Decimal


@dataclass
class CustomerOrder:
    """The order's facts as the customer's page needs them."""

    number: str
    placed_at: datetime
    currency: str
    total: Decimal
    status: str
    saga_status: str
    lines: list[CustomerLine]
    charged: bool  # the payment went through (and may have been refunded since)
    refunded: bool
    # Only for an order that did not go through and whose charge we never recorded: the
    # gateway confirms it holds no charge under the order's key. False when it holds one
    # (a lost answer, not yet refunded) or cannot be asked: the page then never says
    # "not charged".
    gateway_confirms_no_charge: bool
    shipped: bool  # handed to the carrier, and not called back
    confirmation_sent: bool
    # Where the parcel goes (label lines; empty for orders from before addresses) and the
    # carrier's tracking number once shipped. The customer's own, so theirs to see.
    address_lines: list[str] = field(default_factory=list)
    tracking_number: str = ""


def order_by_public_token(token: str) -> Order | None:
    if not _PUBLIC_TOKEN.match(token or ""):
        return None  # not a token we could have issued (and no NUL bytes for Postgres)
    return Order.objects.filter(public_token=token).first()


UNSUCCESSFUL_STATUSES = {OrderStatus.FAILED, OrderStatus.CANCELLED, OrderStatus.REJECTED}
UNDOING_SAGA_STATUSES = {SagaStatus.COMPENSATING, SagaStatus.COMPENSATED}


def _gateway_confirms_no_charge(order: Order) -> bool:
    """Ask the gateway whether it holds a charge under the order's key; False if it cannot say."""
    if not order.workflow_id:
        return True  # never started: nothing could have been charged
    try:
        return payment_gateway().charge_lookup(f"{order.workflow_id}:charge") is None
    except GatewayUnavailable:
        return False


def customer_order(order: Order) -> CustomerOrder:
    """Where the order is, from its status and saga events. Two queries, and for an order
    that did not go through with no charge of ours, a charge lookup at the gateway."""
    done = set(
        SagaEvent.objects.filter(order_id=order.pk, kind__in=[Kind.SUCCEEDED, Kind.COMPENSATED])
        .values_list("step", "kind")
    )
    lines = [
        CustomerLine(name=line.product.name, quantity=line.quantity, unit_price=line.unit_price,
                     line_total=line.line_total)
        for line in order.lines.select_related("product").order_by("id")
    ]
    charged = ("charge", Kind.SUCCEEDED) in done
    unsuccessful = order.status in UNSUCCESSFUL_STATUSES or order.saga_status in UNDOING_SAGA_STATUSES
    return CustomerOrder(
        number=order.number, placed_at=order.created_at, currency=order.currency, total=order.total,
        status=order.status, saga_status=order.saga_status, lines=lines,
        charged=charged,
        refunded=charged and ("charge", Kind.COMPENSATED) in done,
        gateway_confirms_no_charge=not charged and unsuccessful and _gateway_confirms_no_charge(order),
        shipped=("ship", Kind.SUCCEEDED) in done and ("ship", Kind.COMPENSATED) not in done,
        confirmation_sent=("notify", Kind.SUCCEEDED) in done,
        address_lines=address.lines() if (address := order_shipping_address(order)) else [],
        tracking_number=_tracking_number(order) if ("ship", Kind.SUCCEEDED) in done else "",
    )


def _tracking_number(order: Order) -> str:
    return Shipment.objects.filter(order_id=order.pk).values_list("carrier_reference", flat=True).first() or ""
