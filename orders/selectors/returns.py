"""Returns of an order, for the staff detail page and the customer's page."""

from dataclasses import dataclass

from django.db.models import Prefetch

from ..models import Order, OrderLine, Return, ReturnLine
from ..status import SagaStatus


@dataclass(frozen=True)
class ReturnableLine:
    line: OrderLine
    left: int  # items of the line not already returned (or on their way back)


def order_returns(order_id: int) -> list[Return]:
    """The order's returns, oldest first, with their lines and products. Two queries."""
    return list(
        Return.objects.filter(order_id=order_id).order_by("id").prefetch_related(
            Prefetch("lines", queryset=ReturnLine.objects.select_related("order_line__product").order_by("id"))
        )
    )


def returnable_lines(order: Order, returns: list[Return]) -> list[ReturnableLine]:
    """Lines that can still come back; empty when the order cannot be returned at all."""
    from ..services.returns import RETURNABLE_STATUSES

    if order.status not in RETURNABLE_STATUSES or order.saga_status != SagaStatus.COMPLETED:
        return []
    taken: dict[int, int] = {}
    for ret in returns:
        if ret.state in (Return.State.EXPIRED, Return.State.ABANDONED):
            continue
        for line in ret.lines.all():
            taken[line.order_line_id] = taken.get(line.order_line_id, 0) + line.quantity
    lines = order.lines.select_related("product").order_by("id")
    return [ReturnableLine(line, line.quantity - taken.get(line.pk, 0)) for line in lines
            if line.quantity > taken.get(line.pk, 0)]
