"""POST /orders/<pk>/actions/<action>/: one operator action (retry, compensate, cancel,
resend, resolved, retry_compensation) through ops.services.operator_action_request.

Shared by the detail page and the ops queues. htmx posts aimed at the detail page's
buttons (HX-Target order-actions-<pk>) get the refreshed buttons; other htmx posts get a
small result partial; plain posts get a message and a redirect to a validated `next`.
"""

import json

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from orders.models import OperatorAction, Order

from ...http import safe_next
from ...permissions import staff_required
from ...services import ActionNotAllowed, operator_action_request
from ..forms import OperatorActionForm
from ..presenters import ActionButtons, action_outcome_message
from ..selectors import ACTION_ORDER, order_actions, order_for_actions, user_action_permissions


@require_POST
@staff_required()
def order_action_view(request, pk: int, action: str):
    if action not in ACTION_ORDER:
        raise Http404("No such action.")
    form = OperatorActionForm(request.POST)
    status, level = 200, messages.SUCCESS
    if not form.is_valid():
        text, level, status = " ".join(form.errors["reason"]), messages.ERROR, 400
    else:
        try:
            audit = operator_action_request(
                order_id=pk, action=action, actor=request.user, reason=form.cleaned_data["reason"]
            )
        except Order.DoesNotExist:
            raise Http404("No such order.") from None
        except PermissionDenied as denied:
            text, level, status = str(denied) or "You do not have permission to do that.", messages.ERROR, 403
        except ActionNotAllowed as not_allowed:
            text, level = str(not_allowed), messages.ERROR
        else:
            text = action_outcome_message(audit)
            level = messages.ERROR if audit.outcome == OperatorAction.Outcome.FAILED else messages.SUCCESS
    return _respond(request, pk=pk, action=action, text=text, level=level, status=status)


def _respond(request, *, pk: int, action: str, text: str, level: int, status: int):
    ok = level == messages.SUCCESS
    tag = "success" if ok else "error"
    if not request.htmx:
        if status == 403:
            return render(request, "orders/action_denied.html", {"message": text, "order_id": pk}, status=403)
        messages.add_message(request, level, text)
        return redirect(safe_next(request, reverse("orders:detail", args=[pk])))
    if request.htmx.target == f"order-actions-{pk}":
        order = order_for_actions(pk)
        if order is None:
            raise Http404("No such order.")
        context = {"actions": ActionButtons(order_actions(order, user_action_permissions(request.user))), "order": order,
                   "order_id": pk, "action_message": text, "action_message_tag": tag}
        # The buttons, and the answer out of band into its own slot (the socket re-renders the buttons).
        response = render(request, "orders/partials/order_action_response.html", context, status=status)
    else:
        context = {"order_id": pk, "action_message": text, "action_message_tag": tag}
        response = render(request, "orders/partials/action_result.html", context, status=status)
    # Lets other parts of the page (a queue row, a counter) react to the outcome.
    response["HX-Trigger"] = json.dumps({"order-action": {"order": pk, "action": action, "ok": ok}})
    return response
