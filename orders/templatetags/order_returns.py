"""How returns read on the staff detail page and the customer's page: the section's data
(orders.selectors.returns) and each state's words and badge tone."""

from django import template

from ..models import Return
from ..selectors.returns import order_returns, returnable_lines

register = template.Library()

State = Return.State
# Staff words are the model's labels; the tone colours the badge (the text says the state).
STATE_TONES = {
    State.AWAITING_PARCEL: "info", State.RECEIVED: "info", State.REFUNDING: "info", State.STUCK: "bad",
    State.REFUNDED: "ok", State.EXPIRED: "warn", State.ABANDONED: "warn",
}
CUSTOMER_WORDS = {
    State.AWAITING_PARCEL: "We're waiting for your parcel to come back",
    State.RECEIVED: "We have your parcel; your refund is being prepared",
    State.REFUNDING: "Your refund is on its way",
    State.STUCK: "Your refund is delayed; we're on it",
    State.REFUNDED: "Refunded",
    State.EXPIRED: "We did not receive the parcel, so nothing was refunded",
    State.ABANDONED: "We could not refund this; we'll be in touch",
}


@register.filter
def has_returns(order) -> bool:
    """Whether the live frame on (re)connect needs the returns section: without returns the
    page already shows "none", and nothing can have changed it but a return's event."""
    return Return.objects.filter(order_id=order.pk).exists()


@register.filter
def return_tone(ret: Return) -> str:
    return STATE_TONES.get(ret.state, "")


@register.filter
def return_customer_words(ret: Return) -> str:
    return CUSTOMER_WORDS.get(ret.state, ret.get_state_display())


# Who may open returns and refunds: the permission of operator commands (ops.permissions
# names it; orders cannot import ops, so the string is repeated here).
OPERATE_PERMISSION = "ops.operate_saga"


@register.inclusion_tag("orders/partials/order_returns.html", takes_context=True)
def order_returns_section(context, order, oob: bool = False):
    """The returns of an order on the staff page: the list (also sent live, `oob`, by the
    page's socket) and, on the page itself for operators, the forms."""
    request = context.get("request")
    user = getattr(request, "user", None)
    can_operate = bool(not oob and user is not None and user.has_perm(OPERATE_PERMISSION))
    returns = order_returns(order.pk)
    return {"order": order, "returns": returns, "oob": oob, "can_operate": can_operate,
            "csrf_token": context.get("csrf_token"),
            "returnable": returnable_lines(order, returns) if can_operate else [],
            "awaiting_parcel": any(r.state == State.AWAITING_PARCEL for r in returns)}


@register.inclusion_tag("orders/partials/customer_returns.html")
def customer_returns_section(order_id: int):
    return {"returns": order_returns(order_id)}


@register.inclusion_tag("orders/partials/stuck_returns.html")
def stuck_returns_section(limit: int = 50):
    """Returns whose refund waits for an operator, for the stuck queue (their orders' sagas
    finished long ago, so the order list of that page does not show them). One query."""
    returns = list(Return.objects.filter(state=State.STUCK).select_related("order").order_by("updated_at")[:limit])
    return {"returns": returns}
