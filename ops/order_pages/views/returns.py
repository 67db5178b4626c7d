"""POST-only staff endpoints for returns and refunds on the order detail page: open a
return, mark its parcel received, a refund without a return, retry or give up a stuck
refund. Each parses the form, calls one service (orders.services.returns) and goes back to
the detail page with a message; the return's progress then arrives on the page's socket.
"""

from decimal import Decimal, InvalidOperation

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from orders.models import OperatorAction, Order, Return
from orders.services.returns import (
    ReturnLineRequest,
    ReturnNotAllowed,
    refund_open,
    return_command_send,
    return_open,
    return_parcel_receive,
)

from ...permissions import OPERATE_SAGAS, staff_required


def _back(request, pk: int, text: str, ok: bool):
    messages.add_message(request, messages.SUCCESS if ok else messages.ERROR, text)
    return redirect("orders:detail", pk)


def _return_lines(post) -> list[ReturnLineRequest]:
    """`qty-<line id>` and `unsellable-<line id>` fields; a blank or bad quantity is refused."""
    lines = []
    for name, value in post.items():
        if not name.startswith("qty-"):
            continue
        try:
            line_id, quantity = int(name.removeprefix("qty-")), int(value or 0)
        except ValueError:
            raise ReturnNotAllowed(f"{value!r} is not a number of items.") from None
        lines.append(ReturnLineRequest(order_line_id=line_id, quantity=quantity,
                                       sellable=not post.get(f"unsellable-{line_id}")))
    return lines


@require_POST
@staff_required(OPERATE_SAGAS)
def return_open_view(request, pk: int):
    try:
        ret = return_open(order_id=pk, lines=_return_lines(request.POST), reason=request.POST.get("reason", ""),
                          include_shipping=bool(request.POST.get("include_shipping")), actor=request.user)
    except Order.DoesNotExist:
        raise Http404("No such order.") from None
    except ReturnNotAllowed as refused:
        return _back(request, pk, str(refused), ok=False)
    return _back(request, pk, f"Return #{ret.pk} opened: {ret.amount} {ret.order.currency} will be refunded "
                              "once the parcel is back.", ok=True)


@require_POST
@staff_required(OPERATE_SAGAS)
def return_received_view(request, pk: int):
    try:
        audit = return_parcel_receive(order_id=pk, actor=request.user, reason=request.POST.get("reason", ""))
    except Order.DoesNotExist:
        raise Http404("No such order.") from None
    except ReturnNotAllowed as refused:
        return _back(request, pk, str(refused), ok=False)
    if audit.outcome == OperatorAction.Outcome.FAILED:
        return _back(request, pk, audit.outcome_detail, ok=False)
    return _back(request, pk, "Parcel received: the return restocks and refunds now.", ok=True)


@require_POST
@staff_required(OPERATE_SAGAS)
def refund_open_view(request, pk: int):
    raw = (request.POST.get("amount") or "").strip().replace(",", ".")
    try:
        amount = Decimal(raw)
    except InvalidOperation:
        return _back(request, pk, f"{raw!r} is not an amount of money.", ok=False)
    try:
        ret = refund_open(order_id=pk, amount=amount, reason=request.POST.get("reason", ""), actor=request.user)
    except Order.DoesNotExist:
        raise Http404("No such order.") from None
    except ReturnNotAllowed as refused:
        return _back(request, pk, str(refused), ok=False)
    return _back(request, pk, f"Refund #{ret.pk} of {ret.amount} {ret.order.currency} under way.", ok=True)


@require_POST
@staff_required(OPERATE_SAGAS)
def return_command_view(request, pk: int, return_id: int, action: str):
    if action not in (OperatorAction.Action.RETURN_RETRY, OperatorAction.Action.RETURN_ABANDON):
        raise Http404("No such command.")
    if not Return.objects.filter(pk=return_id, order_id=pk).exists():
        raise Http404("No such return.")
    try:
        audit = return_command_send(return_id=return_id, action=action, actor=request.user,
                                    reason=request.POST.get("reason", ""))
    except ReturnNotAllowed as refused:
        return _back(request, pk, str(refused), ok=False)
    if audit.outcome == OperatorAction.Outcome.FAILED:
        return _back(request, pk, audit.outcome_detail, ok=False)
    return _back(request, pk, f"{audit.get_action_display().capitalize()}: sent to return #{return_id}.", ok=True)
