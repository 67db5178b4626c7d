"""What the return saga's activities write (orders.saga.return_activities): its step
events and transitions on the order's timeline, the restock, the refund and the customer's
email. Each is once per key, so a re-run activity or a replayed bookkeeping call changes
nothing. Opening returns and sending them commands is orders.services.returns.
"""

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from ..adapters import payment_gateway
from ..adapters.base import RefundRequest, lookup_after_failure
from ..errors import GatewayUnavailable, RefundRefused
from ..locks import lock_order, lock_products, lock_return
from ..models import Order, Payment, Return, SagaEvent, StockMovement
from ..saga.shared import ReturnStep, ReturnTransition
from .commands import operator_action_outcome_record
from .events import saga_event_record
from .saga import step_event_key


def return_step_started(*, return_id: int, step: str, step_key: str, attempt: int) -> None:
    """The step is under way (or retrying) on the order's timeline. Locks: the order row."""
    ret = Return.objects.get(pk=return_id)
    with transaction.atomic():
        order = lock_order(ret.order_id)
        kind = SagaEvent.Kind.RETRYING if attempt > 1 else SagaEvent.Kind.STARTED
        if step == ReturnStep.REFUND.value:
            with transaction.atomic():
                Return.objects.filter(pk=return_id, state__in=(Return.State.RECEIVED, Return.State.STUCK)).update(
                    state=Return.State.REFUNDING)
        saga_event_record(order, kind=kind, step=step, attempt=attempt, detail=f"Return #{ret.pk}",
                          key=step_event_key(step_key, attempt, kind))


def return_step_failed(*, return_id: int, step: str, step_key: str, attempt: int, error: str) -> None:
    ret = Return.objects.get(pk=return_id)
    with transaction.atomic():
        order = lock_order(ret.order_id)
        with transaction.atomic():
            Return.objects.filter(pk=return_id).update(last_error=error[:2000])
        saga_event_record(order, kind=SagaEvent.Kind.FAILED, step=step, attempt=attempt,
                          detail=f"Return #{ret.pk}: {error}", key=step_event_key(step_key, attempt, SagaEvent.Kind.FAILED))


def return_transition_record(transition: ReturnTransition) -> bool:
    """A return-level fact: its event, the return's state and, for a command, its outcome.
    Once per key (a replayed bookkeeping activity writes nothing). Locks: the order, the return."""
    ret = Return.objects.get(pk=transition.return_id)
    with transaction.atomic():
        order = lock_order(ret.order_id)
        ret = lock_return(ret.pk)
        if transition.key and SagaEvent.objects.filter(idempotency_key=transition.key).exists():
            return False
        action_id = None
        if transition.action_id is not None and operator_action_outcome_record(
            action_id=transition.action_id, order_id=order.pk, outcome=transition.action_outcome,
            detail=transition.detail,
        ):
            action_id = transition.action_id
        if transition.return_state and ret.state not in Return.TERMINAL_STATES:
            ret.state = transition.return_state
            fields = ["state", "updated_at"]
            if transition.return_state in Return.TERMINAL_STATES:
                ret.finished_at = timezone.now()
                fields.append("finished_at")
            if transition.return_state == Return.State.RECEIVED:
                ret.received_source = transition.source[:20]
                fields.append("received_source")
            ret.save(update_fields=fields)
        saga_event_record(order, kind=transition.kind, step=transition.step, detail=transition.detail,
                          key=transition.key or None, operator_action_id=action_id)
    return True


def return_close_unrefunded(*, return_id: int, state: str, detail: str, key: str) -> None:
    """The return ends without a refund (its parcel never came, or staff gave the refund up):
    what it promised is no longer pending. Once per key. Locks: the order, the return."""
    ret = Return.objects.get(pk=return_id)
    with transaction.atomic():
        order = lock_order(ret.order_id)
        ret = lock_return(ret.pk)
        if ret.state in Return.TERMINAL_STATES or SagaEvent.objects.filter(idempotency_key=key).exists():
            return
        Order.objects.filter(pk=order.pk).update(refund_pending_total=F("refund_pending_total") - ret.amount)
        ret.state, ret.finished_at = state, timezone.now()
        ret.save(update_fields=["state", "finished_at", "updated_at"])
        saga_event_record(order, kind=SagaEvent.Kind.FINISHED, step=ReturnStep.RETURN.value, detail=detail, key=key)


def return_restock_key(ret: Return) -> str:
    return f"{ret.order.workflow_id}:r{ret.pk}:restock"


def return_restock(*, return_id: int, attempt: int) -> str:
    """Put what came back sellable on the shelf (sold -> on hand), once per return; items
    not sellable stay counted as sold (written off). Locks: the order, then its products."""
    ret = Return.objects.select_related("order").get(pk=return_id)
    key = return_restock_key(ret)
    with transaction.atomic():
        order = lock_order(ret.order_id)
        if StockMovement.objects.filter(idempotency_key=key).exists():
            return "already restocked"
        lines = list(ret.lines.select_related("order_line__product"))
        sellable = [line for line in lines if line.sellable]
        products = lock_products(line.order_line.product_id for line in sellable)
        for line in sellable:
            product = products[line.order_line.product_id]
            product.sold -= line.quantity
            product.on_hand += line.quantity
            product.save(update_fields=["sold", "on_hand"])
            StockMovement.objects.create(order=order, product=product, kind=StockMovement.Kind.RESTOCK,
                                         quantity=line.quantity, idempotency_key=key)
        parts = [f"{line.quantity} x {line.order_line.product.name}" for line in sellable]
        kept = [f"{line.quantity} x {line.order_line.product.name}" for line in lines if not line.sellable]
        detail = f"Return #{ret.pk}: restocked {', '.join(parts)}" if parts else f"Return #{ret.pk}: nothing to restock"
        if kept:
            detail += f"; not sellable, written off: {', '.join(kept)}"
        saga_event_record(order, kind=SagaEvent.Kind.SUCCEEDED, step=ReturnStep.RESTOCK.value, detail=detail,
                          attempt=attempt)
        return detail


def _record_refund(ret: Return, *, reference: str, detail: str, attempt: int) -> None:
    """Our ledger row, the order's books (pending -> refunded) and the event, in one write."""
    try:
        with transaction.atomic():
            order = lock_order(ret.order_id)
            Payment.objects.create(order=order, kind=Payment.Kind.REFUND, amount=ret.amount, currency=order.currency,
                                   idempotency_key=ret.refund_key, gateway_reference=reference)
            Order.objects.filter(pk=order.pk).update(
                refund_pending_total=F("refund_pending_total") - ret.amount,
                refunded_total=F("refunded_total") + ret.amount,
            )
            Return.objects.filter(pk=ret.pk).update(last_error="")
            saga_event_record(order, kind=SagaEvent.Kind.SUCCEEDED, step=ReturnStep.REFUND.value, detail=detail,
                              attempt=attempt)
    except IntegrityError:
        if not Payment.objects.filter(idempotency_key=ret.refund_key).exists():
            raise  # not our key already there: the books' CHECK, say; it is a bug to see


def return_refund(*, return_id: int, attempt: int) -> str:
    """Refund the return's amount at the gateway under its own key, once. Raises
    GatewayUnavailable (retried, then stuck) or RefundRefused (stuck at once).

    A refund whose answer was lost is found by looking its key up, as the order saga's
    refund does: our ledger follows the gateway's books.
    """
    ret = Return.objects.select_related("order").get(pk=return_id)
    if Payment.objects.filter(idempotency_key=ret.refund_key).exists():
        return "already refunded"
    charge = Payment.objects.filter(order_id=ret.order_id, kind=Payment.Kind.CHARGE).first()
    if charge is None:
        raise RefundRefused(f"{ret.order.number} has no charge in our ledger to refund")
    gateway = payment_gateway()
    lost = ""
    try:
        receipt = gateway.refund(RefundRequest(
            idempotency_key=ret.refund_key, order_id=ret.order_id, charge_reference=charge.gateway_reference,
            amount=ret.amount, currency=charge.currency,
        ))
    except GatewayUnavailable:
        booked = lookup_after_failure(gateway.refund_lookup, ret.refund_key)
        if booked is None:
            raise
        receipt, lost = booked.receipt, ": the gateway's answer was lost, found by looking the refund up"
    detail = f"Return #{ret.pk}: refunded {ret.amount} {charge.currency} ({receipt.reference}){lost}"
    _record_refund(ret, reference=receipt.reference, detail=detail, attempt=attempt)
    return detail


def return_notify(*, return_id: int, attempt: int) -> str:
    """Tell the customer their money is on its way back, once per return."""
    from .notifications import customer_message_send

    ret = Return.objects.select_related("order").get(pk=return_id)
    order = ret.order
    lines = list(ret.lines.select_related("order_line__product"))
    return customer_message_send(
        order_id=order.pk, key=f"{ret.workflow_id}:notify:refunded", attempt=attempt,
        subject=f"Your refund for order {order.number}",
        template="orders/email/return_refunded.txt",
        context={"return": ret, "lines": lines},
        step=ReturnStep.NOTIFY.value,
    )
