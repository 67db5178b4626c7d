"""What a customer may know of their order: no errors, fault plans or internal ids.

The wording of the customer's page is orders.presenters'; this says what happened.
"""

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from ..models import Order, SagaEvent

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
    shipped: bool  # handed to the carrier, and not called back
    confirmation_sent: bool


def order_by_public_token(token: str) -> Order | None:
    if not _PUBLIC_TOKEN.match(token or ""):
        return None  # not a token we could have issued (and no NUL bytes for Postgres)
    return Order.objects.filter(public_token=token).first()


def customer_order(order: Order) -> CustomerOrder:
    """Where the order is, from its status and saga events. Two queries."""
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
    return CustomerOrder(
        number=order.number, placed_at=order.created_at, currency=order.currency, total=order.total,
        status=order.status, saga_status=order.saga_status, lines=lines,
        charged=charged,
        refunded=charged and ("charge", Kind.COMPENSATED) in done,
        shipped=("ship", Kind.SUCCEEDED) in done and ("ship", Kind.COMPENSATED) not in done,
        confirmation_sent=("notify", Kind.SUCCEEDED) in done,
    )
