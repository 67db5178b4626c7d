"""{% stall_flags_card %}: the flagged-sagas card for the ops dashboard, live over its own socket."""

from django import template

from ..sweeper import stall_flags_card_context

register = template.Library()


@register.inclusion_tag("ops/background/partials/flags_live.html")
def stall_flags_card():
    # Three queries (flags, their count, the last sweep), whatever the number of orders.
    return stall_flags_card_context()
