"""The customer's page in the customer's words (templates/orders/customer_status.html and
its partial): a headline, a message, and the stages of an order."""

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from .selectors.customer import CustomerLine, CustomerOrder
from .status import OrderStatus, SagaStatus

STAGE_STATE_LABELS = {"done": "Done", "current": "In progress", "upcoming": "Not yet"}


@dataclass
class CustomerStage:
    label: str
    state: str  # done, current, upcoming

    @property
    def state_label(self) -> str:
        return STAGE_STATE_LABELS[self.state]


@dataclass
class CustomerOrderStatus:
    number: str
    placed_at: datetime
    currency: str
    total: Decimal
    headline: str
    message: str
    outcome: str  # in_progress, done, unsuccessful (also the page's CSS modifier)
    stages: list[CustomerStage]
    lines: list[CustomerLine]
    confirmation_sent: bool
    address_lines: list[str] = field(default_factory=list)
    tracking_number: str = ""


def _money_after_failure(order: CustomerOrder) -> str:
    """What became of the customer's money when the order did not go through. "Not charged"
    only when the gateway agrees: a charge whose answer was lost is at the gateway even
    though our ledger may not show it yet."""
    if order.refunded:
        return "We've refunded your payment in full."
    if order.charged:
        return "We're refunding your payment in full."
    if order.gateway_confirms_no_charge:
        return "You have not been charged."
    return "If any payment was taken, we'll refund it in full."


def customer_status_present(order: CustomerOrder) -> CustomerOrderStatus:
    """Say where the order is, as the customer would put it."""
    delivered = order.status == OrderStatus.DELIVERED
    not_charged = _money_after_failure(order)
    outcome = "in_progress"
    if order.status == OrderStatus.REJECTED:
        headline, message, outcome = "We couldn't accept your order", not_charged, "unsuccessful"
    elif order.status == OrderStatus.CANCELLED:
        headline, message, outcome = "Your order was cancelled", not_charged, "unsuccessful"
    elif order.status == OrderStatus.FAILED or order.saga_status in (SagaStatus.COMPENSATING, SagaStatus.COMPENSATED):
        outcome = "unsuccessful"
        headline = "We couldn't complete your order"
        if order.saga_status == SagaStatus.COMPENSATING:
            message = "We're reversing it now; any payment taken will be refunded in full."
        else:
            message = not_charged
    elif delivered:
        headline, message, outcome = "Delivered", "Your order has arrived. Thank you for shopping with us.", "done"
    elif order.shipped:
        headline = "Packed and handed to the carrier"
        message = "Your parcel is on its way."
    elif order.charged:
        headline, message = "Payment taken", "We're packing your order."
    else:
        headline, message = "We've received your order", "We're checking it and will take payment shortly."

    stages = [
        CustomerStage("We've received your order", "done"),
        CustomerStage("Payment taken", "done" if order.charged and not order.refunded else "upcoming"),
        CustomerStage("Packed and handed to the carrier", "done" if order.shipped else "upcoming"),
        CustomerStage("Delivered", "done" if delivered else "upcoming"),
    ]
    if outcome == "in_progress":
        for stage in stages:
            if stage.state == "upcoming":
                stage.state = "current"
                break
    return CustomerOrderStatus(
        number=order.number, placed_at=order.placed_at, currency=order.currency, total=order.total,
        headline=headline, message=message, outcome=outcome, stages=stages, lines=order.lines,
        confirmation_sent=order.confirmation_sent,
        address_lines=order.address_lines, tracking_number=order.tracking_number,
    )
