"""Returns and refunds after the sale: opening them (staff), starting their sagas
(orders.saga.return_saga), the parcel coming back, and operator commands. What the saga's
activities write is orders.services.return_steps.

Money: a return's `amount` is counted in the order's refund_pending_total from the moment
it opens until it is refunded (then refunded_total) or closed without a refund. The
database's CHECK (order_refunds_within_charge) refuses any write that would promise more
than was charged, whatever the path: here that IntegrityError becomes ReturnNotAllowed, a
message staff can read.
"""

import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Sum
from django.utils import timezone
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy

from ..locks import lock_order, lock_return
from ..models import OperatorAction, Order, Return, ReturnLine, SagaEvent
from ..saga import search_attributes as sa
from ..saga.shared import (
    ParcelReceived,
    RetrySettings,
    ReturnInput,
    ReturnStep,
    return_workflow_id,
)
from ..status import OrderStatus, SagaStatus
from ..temporal_client import run_with_client
from .events import saga_event_record
from .saga import customer_search_id

logger = logging.getLogger(__name__)

RETURN_WORKFLOW = "ReturnSaga"
Action = OperatorAction.Action
Outcome = OperatorAction.Outcome
# Returns (and refunds) are for orders whose sale stands.
RETURNABLE_STATUSES = (OrderStatus.COMPLETED, OrderStatus.DELIVERED)


class ReturnNotAllowed(Exception):
    """The return, refund or command does not fit the order; the message says why, for staff."""


@dataclass(frozen=True)
class ReturnLineRequest:
    order_line_id: int
    quantity: int
    sellable: bool = True


# --- opening ----------------------------------------------------------------------------


def _returnable_check(order: Order) -> None:
    if order.status not in RETURNABLE_STATUSES or order.saga_status != SagaStatus.COMPLETED:
        raise ReturnNotAllowed(
            f"Order {order.number} is {order.get_status_display()}: only completed or delivered orders "
            "can be returned or refunded."
        )


def returned_quantities(order: Order) -> dict[int, int]:
    """Per order line, the items already coming back or refunded (returns not closed
    without a refund)."""
    rows = (ReturnLine.objects.filter(return_request__order=order)
            .exclude(return_request__state__in=(Return.State.EXPIRED, Return.State.ABANDONED))
            .values("order_line_id").annotate(n=Sum("quantity")))
    return {row["order_line_id"]: row["n"] for row in rows}


def _reserve_refund(order: Order, amount: Decimal) -> None:
    """Count `amount` as about to be refunded. The database refuses it beyond the charge.
    The caller holds the order's row lock."""
    try:
        with transaction.atomic():
            Order.objects.filter(pk=order.pk).update(refund_pending_total=F("refund_pending_total") + amount)
    except IntegrityError:
        left = order.charged_total - order.refunded_total - order.refund_pending_total
        raise ReturnNotAllowed(
            f"A refund of {amount} {order.currency} would exceed what was charged for {order.number}: "
            f"{order.charged_total} charged, {order.refunded_total} refunded, {order.refund_pending_total} "
            f"promised to open returns; at most {max(left, Decimal(0))} {order.currency} can still be refunded."
        ) from None


def _new_return(order: Order, *, kind: str, reason: str, amount: Decimal, include_shipping: bool,
                shipping_amount: Decimal, deadline, actor, action: str) -> tuple[Return, OperatorAction]:
    # Placeholders first: both ids derive from the return's primary key.
    placeholder = f"pending-{secrets.token_hex(8)}"
    ret = Return.objects.create(
        order=order, kind=kind, reason=reason, amount=amount, include_shipping=include_shipping,
        shipping_amount=shipping_amount, deadline=deadline, created_by=actor,
        workflow_id=placeholder, refund_key=placeholder,
        state=Return.State.AWAITING_PARCEL if kind == Return.Kind.RETURN else Return.State.REFUNDING,
    )
    ret.workflow_id = return_workflow_id(order.workflow_id, ret.pk)
    # The random part keeps a restored database from ever reusing a refund key at the gateway.
    ret.refund_key = f"{order.workflow_id}:r{ret.pk}-{secrets.token_hex(4)}:refund"
    ret.save(update_fields=["workflow_id", "refund_key"])
    audit = OperatorAction.objects.create(order=order, action=action, actor=actor, reason=reason[:2000],
                                          return_request=ret, outcome=Outcome.APPLIED)
    return ret, audit


def return_open(*, order_id: int, lines: list[ReturnLineRequest], reason: str, include_shipping: bool = False,
                actor=None) -> Return:
    """Open a return of some or all of a completed order's lines and start its saga (on commit).

    Raises ReturnNotAllowed (nothing is written then). The caller has checked the actor's
    permission. Locks: the order row.
    """
    reason = (reason or "").strip()
    if not reason:
        raise ReturnNotAllowed("Say why the goods come back.")
    wanted = [line for line in lines if line.quantity]
    if any(line.quantity < 0 for line in wanted):
        raise ReturnNotAllowed("Quantities cannot be negative.")
    if not wanted:
        raise ReturnNotAllowed("Choose at least one item to return.")
    if len({line.order_line_id for line in wanted}) < len(wanted):
        raise ReturnNotAllowed("Each line can be named once in a return.")
    with transaction.atomic():
        order = lock_order(order_id)
        _returnable_check(order)
        order_lines = {line.pk: line for line in order.lines.select_related("product")}
        already = returned_quantities(order)
        amount = Decimal(0)
        for line in wanted:
            order_line = order_lines.get(line.order_line_id)
            if order_line is None:
                raise ReturnNotAllowed(f"Line {line.order_line_id} is not a line of {order.number}.")
            left = order_line.quantity - already.get(order_line.pk, 0)
            if line.quantity > left:
                raise ReturnNotAllowed(
                    f"{order_line.product.name}: {line.quantity} cannot come back, only {left} of "
                    f"{order_line.quantity} are not already returned."
                )
            amount += order_line.unit_price * line.quantity
        shipping = Decimal(settings.RETURN_SHIPPING_REFUND_AMOUNT) if include_shipping else Decimal(0)
        amount += shipping
        _reserve_refund(order, amount)
        deadline = timezone.now() + timedelta(seconds=settings.RETURN_PARCEL_DEADLINE_SECONDS)
        ret, audit = _new_return(order, kind=Return.Kind.RETURN, reason=reason, amount=amount,
                                 include_shipping=include_shipping, shipping_amount=shipping, deadline=deadline,
                                 actor=actor, action=Action.RETURN_OPEN)
        ReturnLine.objects.bulk_create(
            ReturnLine(return_request=ret, order_line_id=line.order_line_id, quantity=line.quantity,
                       sellable=line.sellable)
            for line in wanted
        )
        items = ", ".join(f"{line.quantity} x {order_lines[line.order_line_id].product.name}" for line in wanted)
        shipping_note = f" and {shipping} shipping" if shipping else ""
        saga_event_record(order, kind=SagaEvent.Kind.STARTED, step=ReturnStep.RETURN.value,
                          detail=f"Return #{ret.pk} opened: {items}{shipping_note}, {amount} {order.currency} "
                                 f"to refund once the parcel is back ({reason})",
                          operator_action_id=audit.pk, key=f"{ret.workflow_id}:opened")
        transaction.on_commit(lambda: return_saga_start(return_id=ret.pk))
    return ret


def refund_open(*, order_id: int, amount, reason: str, actor=None) -> Return:
    """A refund without a return (goodwill, part of the price): the return saga without the
    parcel and the restock. Raises ReturnNotAllowed. Locks: the order row."""
    reason = (reason or "").strip()
    if not reason:
        raise ReturnNotAllowed("Say why the customer gets money back.")
    try:
        amount = Decimal(str(amount)).quantize(Decimal("0.01"))
        if not amount.is_finite():
            raise InvalidOperation
    except (InvalidOperation, ValueError):
        raise ReturnNotAllowed(f"{str(amount)!r} is not an amount of money.") from None
    if amount <= 0:
        raise ReturnNotAllowed("The refund must be more than zero.")
    with transaction.atomic():
        order = lock_order(order_id)
        _returnable_check(order)
        _reserve_refund(order, amount)
        ret, audit = _new_return(order, kind=Return.Kind.GOODWILL, reason=reason, amount=amount,
                                 include_shipping=False, shipping_amount=Decimal(0), deadline=None, actor=actor,
                                 action=Action.REFUND)
        saga_event_record(order, kind=SagaEvent.Kind.STARTED, step=ReturnStep.RETURN.value,
                          detail=f"Refund #{ret.pk} without a return: {amount} {order.currency} ({reason})",
                          operator_action_id=audit.pk, key=f"{ret.workflow_id}:opened")
        transaction.on_commit(lambda: return_saga_start(return_id=ret.pk))
    return ret


def return_input_for(ret: Return) -> ReturnInput:
    return ReturnInput(
        return_id=ret.pk, order_id=ret.order_id, payments_task_queue=settings.PAYMENTS_TASK_QUEUE,
        parcel_deadline_seconds=settings.RETURN_PARCEL_DEADLINE_SECONDS if ret.kind == Return.Kind.RETURN else None,
        retry=RetrySettings(initial_interval_seconds=settings.SAGA_RETRY_INITIAL_SECONDS),
    )


def return_saga_start(*, return_id: int) -> bool:
    """Start the return's workflow; safe to call again (an existing run is kept). If Temporal
    cannot be reached the reason is on the timeline and the return stays as it is."""
    ret = Return.objects.select_related("order").get(pk=return_id)
    order = ret.order
    attributes = TypedSearchAttributes([
        SearchAttributePair(sa.ORDER_ID, order.pk),
        SearchAttributePair(sa.CUSTOMER_ID, customer_search_id(order.customer_email)),
        SearchAttributePair(sa.ORDER_AMOUNT, float(ret.amount)),
        SearchAttributePair(sa.SAGA_STATUS, SagaStatus.RUNNING.value),
        SearchAttributePair(sa.CURRENT_STEP, (ReturnStep.PARCEL if ret.kind == Return.Kind.RETURN
                                              else ReturnStep.REFUND).value),
    ])

    async def start(client):
        await client.start_workflow(
            RETURN_WORKFLOW, return_input_for(ret), id=ret.workflow_id, task_queue=settings.SAGA_TASK_QUEUE,
            search_attributes=attributes, id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )

    try:
        run_with_client(start, timeout=15)
        return True
    except Exception as exc:
        logger.exception("could not start the saga of return %s", return_id)
        with transaction.atomic():
            order = lock_order(order.pk)
            saga_event_record(order, kind=SagaEvent.Kind.FAILED, step=ReturnStep.RETURN.value,
                              detail=f"Could not start the saga of return #{return_id}: {exc}")
        return False


def return_sagas_restart(*, quiet_seconds: float, limit: int = 200) -> int:
    """Start again the sagas of open returns that Temporal does not know (it was down when
    the return was opened) or that closed without finishing them (terminated, failed).
    Returns how many were started.

    Safe for a return whose saga did run: every effect of the saga is keyed (restock, refund,
    email) and its bookkeeping too, so a second run does nothing twice. Called by the
    stalled-saga sweep; looks only at returns quiet for `quiet_seconds`.
    """
    from temporalio.client import WorkflowExecutionStatus
    from temporalio.service import RPCError, RPCStatusCode

    cutoff = timezone.now() - timedelta(seconds=quiet_seconds)
    candidates = list(Return.objects.filter(state__in=Return.OPEN_STATES, updated_at__lt=cutoff)
                      .order_by("updated_at").values_list("pk", "workflow_id")[:limit])
    if not candidates:
        return 0

    async def unknown(client) -> list[int]:
        missing = []
        for pk, workflow_id in candidates:
            try:
                description = await client.get_workflow_handle(workflow_id).describe()
            except RPCError as err:
                if err.status == RPCStatusCode.NOT_FOUND:
                    missing.append(pk)
                continue
            # Closed while the return is open (failed, terminated): a new run finishes it.
            if description.status != WorkflowExecutionStatus.RUNNING:
                missing.append(pk)
        return missing

    try:
        missing = run_with_client(unknown, timeout=60)
    except Exception as exc:  # Temporal down: the next sweep tries again
        logger.warning("could not look for unstarted return sagas: %s", exc)
        return 0
    started = 0
    for return_id in missing:
        started += return_saga_start(return_id=return_id)
    return started


# --- the parcel comes back, and operator commands ----------------------------------------


def _signal(workflow_id: str, signal: str, payload) -> str:
    """Signal a return's workflow; returns an error message, or "" when Temporal took it."""

    async def send(client):
        await client.get_workflow_handle(workflow_id).signal(signal, payload)

    try:
        run_with_client(send, timeout=15)
        return ""
    except Exception as exc:
        logger.warning("signal %s to %s failed: %s", signal, workflow_id, exc)
        return f"Could not reach the return's saga: {exc}"


def on_parcel_returned(sender, order_id: int, source: str, action_id: int | None = None, **kwargs) -> None:
    """Receiver of orders.signals.parcel_returned: the parcel wakes the order's oldest return
    waiting for one. A parcel no return waits for (refused at the door, say) is left to the
    delivery side; it is logged here."""
    ret = (Return.objects.filter(order_id=order_id, state=Return.State.AWAITING_PARCEL)
           .order_by("pk").first())
    if ret is None:
        logger.info("parcel of order %s returned (%s), but no return waits for it", order_id, source)
        if action_id is not None:
            OperatorAction.objects.filter(pk=action_id).update(
                outcome=Outcome.IGNORED, outcome_detail="No return of this order waits for a parcel.")
        return
    if action_id is not None:
        OperatorAction.objects.filter(pk=action_id).update(return_request=ret)
    error = _signal(ret.workflow_id, "parcel_received", ParcelReceived(source=source, action_id=action_id))
    if error and action_id is not None:
        OperatorAction.objects.filter(pk=action_id).update(outcome=Outcome.FAILED, outcome_detail=error)
    elif action_id is not None:
        OperatorAction.objects.filter(pk=action_id, outcome=Outcome.REQUESTED).update(outcome=Outcome.SENT)


def return_parcel_receive(*, order_id: int, actor, reason: str = "") -> OperatorAction:
    """Staff have the returned parcel in hand: an audit row, then the same domain signal the
    carrier's `returned` event sends. Raises ReturnNotAllowed. Locks: the order row."""
    from ..signals import parcel_returned

    with transaction.atomic():
        order = lock_order(order_id)
        if not order.returns.filter(state=Return.State.AWAITING_PARCEL).exists():
            raise ReturnNotAllowed(f"No return of {order.number} is waiting for its parcel.")
        audit = OperatorAction.objects.create(order=order, action=Action.PARCEL_RECEIVED, actor=actor,
                                              reason=(reason or "").strip()[:2000])
    parcel_returned.send(sender=return_parcel_receive, order_id=order_id, source="staff", action_id=audit.pk)
    audit.refresh_from_db()
    return audit


def return_command_send(*, return_id: int, action: str, actor, reason: str = "") -> OperatorAction:
    """Retry a stuck refund, or give it up. Raises Return.DoesNotExist or ReturnNotAllowed.
    Locks: the order row."""
    if action not in (Action.RETURN_RETRY, Action.RETURN_ABANDON):
        raise ReturnNotAllowed(f"Unknown return command {action!r}.")
    ret = Return.objects.get(pk=return_id)
    with transaction.atomic():
        lock_order(ret.order_id)
        ret = lock_return(return_id)
        if ret.state != Return.State.STUCK:
            raise ReturnNotAllowed(f"Return #{ret.pk} is not stuck (it is {ret.get_state_display()}).")
        audit = OperatorAction.objects.create(order_id=ret.order_id, action=action, actor=actor, return_request=ret,
                                              reason=(reason or "").strip()[:2000])
    from ..saga.shared import OperatorCommand

    error = _signal(ret.workflow_id, action, OperatorCommand(action_id=audit.pk, reason=audit.reason))
    if error:
        OperatorAction.objects.filter(pk=audit.pk).update(outcome=Outcome.FAILED, outcome_detail=error)
    else:
        OperatorAction.objects.filter(pk=audit.pk, outcome=Outcome.REQUESTED).update(outcome=Outcome.SENT)
    audit.refresh_from_db()
    return audit
