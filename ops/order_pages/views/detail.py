"""The order detail page: lines, ledger, the live saga timeline and the operator buttons."""

from django.http import Http404
from django.shortcuts import render

from orders.selectors.ledger import OrderDetail, order_detail
from orders.selectors.waterfall import saga_waterfall_build
from orders.selectors.preview import rollback_outcome
from orders.status import SagaStatus

from ...charts.presenters import waterfall_present
from ...permissions import can_create_orders, staff_required
from ..presenters import ActionButtons, rollback_outcome_lines
from ..selectors import order_actions, user_action_permissions


# A saga that ended by rolling back: the page says what the rollback did.
ROLLED_BACK = frozenset({SagaStatus.COMPENSATED.value, SagaStatus.CANCELLED.value})


def detail_context(detail: OrderDetail) -> dict:
    """What the summary, timeline and ledger partials need; the websocket renders them too."""
    order = detail.order
    outcome = rollback_outcome_lines(rollback_outcome(order)) if order.saga_status in ROLLED_BACK else []
    return {
        "detail": detail,
        "order": order,
        "timeline": detail.timeline,
        "temporal_url": detail.temporal_url,
        "rollback_outcome": outcome,
    }


@staff_required()
def order_detail_view(request, pk: int):
    detail = order_detail(pk)
    if detail is None:
        raise Http404("No such order.")
    context = detail_context(detail)
    context["actions"] = ActionButtons(order_actions(detail.order, user_action_permissions(request.user)))
    context["can_create"] = can_create_orders(request.user)
    # From the events the timeline read already: no query of its own.
    context["waterfall"] = waterfall_present(saga_waterfall_build(detail.timeline))
    return render(request, "orders/detail.html", context)
