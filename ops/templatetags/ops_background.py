"""Template tags of the background operations: the dashboard's flagged-sagas card (live over
its own socket) and one order's stall flag."""

from django import template

from ..stalls.selectors import stall_flag_for_order, stall_flags_card_context

register = template.Library()


@register.inclusion_tag("ops/background/partials/flags_live.html")
def stall_flags_card():
    # Three queries (flags, their count, the last sweep), whatever the number of orders.
    return stall_flags_card_context()


@register.inclusion_tag("ops/background/partials/order_flag.html")
def order_stall_flag(order):
    """{% order_stall_flag order %}: why this order's saga is flagged as stalled, if it is. One query."""
    return {"flag": stall_flag_for_order(order.pk), "order": order}
