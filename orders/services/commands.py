"""Commands staff send to a saga (retry, compensate, cancel, resend, resolve): the record
of each, the Temporal signal that carries its id, and the saga's answer.

Who may send which command is decided before this, by the staff side
(ops.services.operator_action_request); here a command is checked against the order's
state, recorded, and signalled. The workflow acts at most once per id and reports back
through operator_action_outcome_record (from its bookkeeping activity), so the row ends up
saying what really happened, and the saga event it caused points to it.
"""

from functools import cached_property

from django.db import transaction
from django.utils import timezone

from ..locks import lock_order
from ..log_context import get_logger, order_bind
from ..models import FollowUp, OperatorAction, Order, SagaEvent, Shipment
from ..saga.shared import CANCELLABLE_STEPS, OperatorCommand, delivery_workflow_id
from ..status import TERMINAL_SAGA_STATUSES, OrderStatus, SagaStatus
from ..temporal_client import run_with_client
from .events import saga_event_record

logger = get_logger(__name__)

Action = OperatorAction.Action
Outcome = OperatorAction.Outcome

# Commands for the delivery tracker (a shipped order's), not the saga: the signal goes there.
DELIVERY_ACTIONS = (Action.MARK_DELIVERED, Action.LOST_REFUND, Action.LOST_RESHIP)


class ActionNotAllowed(Exception):
    """The action does not fit the order's state; the message says why, for staff."""


class OrderFacts:
    """What the checks read beyond the order row, read once however many actions are
    checked: a page asking which of nine actions fit reads each fact once, not per action."""

    def __init__(self, order: Order) -> None:
        self.order = order

    @cached_property
    def open_followup_kinds(self) -> set[str]:
        return set(self.order.followups.filter(state=FollowUp.State.OPEN).values_list("kind", flat=True))

    @cached_property
    def shipment(self) -> Shipment | None:
        return Shipment.objects.filter(order=self.order).first()


def operator_action_check(order: Order, action: str, facts: OrderFacts | None = None) -> str | None:
    """Why `action` does not fit the order as the database shows it, or None if it does.
    `facts`: shared by the checks of several actions on the same order (OrderFacts)."""
    facts = facts or OrderFacts(order)
    if action in (Action.RETRY, Action.COMPENSATE):
        if order.saga_status != SagaStatus.STUCK:
            return f"Order {order.number} is not stuck (its saga is {order.get_saga_status_display()})."
    elif action == Action.RETRY_COMPENSATION:
        if order.saga_status != SagaStatus.COMPENSATION_STUCK:
            return f"Order {order.number} has no stuck compensation (its saga is {order.get_saga_status_display()})."
    elif action == Action.CANCEL:
        if order.saga_status in TERMINAL_SAGA_STATUSES:
            return f"Order {order.number} is already {order.get_saga_status_display()}."
        if order.saga_status in (SagaStatus.COMPENSATING, SagaStatus.COMPENSATION_STUCK):
            return f"Order {order.number} is already being rolled back."
        if order.current_step and order.current_step not in {s.value for s in CANCELLABLE_STEPS}:
            return f"Order {order.number} can no longer be cancelled: shipping has been arranged."
    elif action == Action.RESEND:
        if FollowUp.Kind.NOTIFY not in facts.open_followup_kinds:
            return f"Order {order.number} has no open follow-up."
    elif action == Action.RESOLVED:
        if not facts.open_followup_kinds:
            return f"Order {order.number} has no open follow-up."
    elif action in DELIVERY_ACTIONS:
        shipment = facts.shipment
        if order.status not in (OrderStatus.PROCESSING, OrderStatus.COMPLETED) or shipment is None \
                or shipment.state != Shipment.State.BOOKED:
            return f"Order {order.number} has no parcel on its way."
        if shipment.tracking_ended_at is not None:
            return f"Order {order.number}'s delivery is no longer tracked."
    else:
        return f"Unknown action {action!r}."
    return None


def operator_action_send(*, order_id: int, action: str, actor, reason: str = "") -> OperatorAction:
    """Check the command against the order, record it, then signal the saga. Returns the row.

    The caller has checked the actor's permission. Raises Order.DoesNotExist or
    ActionNotAllowed (nothing is written then). Must not run inside an outer transaction:
    the saga has to see the row when the signal lands.
    Locks: the order row, while checking and writing the record.
    """
    if action not in Action.values:
        raise ActionNotAllowed(f"Unknown action {action!r}.")
    with transaction.atomic():
        order = lock_order(order_id)
        order_bind(order)
        why_not = operator_action_check(order, action)
        if why_not:
            logger.info("operator_action_refused", action=action, reason=why_not)
            raise ActionNotAllowed(why_not)
        audit = OperatorAction.objects.create(order=order, action=action, actor=actor, reason=reason.strip()[:2000])
        if action == Action.RESOLVED and not order.followups.filter(
                state=FollowUp.State.OPEN, kind=FollowUp.Kind.NOTIFY).exists():
            # Only follow-ups of the delivery (overdue, failed, a lost parcel's) or of an
            # ended saga's untold outcome are open: no workflow waits on them, so staff
            # settle them here.
            _followups_resolve_here(order, audit)
            return audit
    target = delivery_workflow_id(order.workflow_id) if action in DELIVERY_ACTIONS else order.workflow_id
    _signal(audit, target)
    audit.refresh_from_db()
    return audit


def _followups_resolve_here(order: Order, audit: OperatorAction) -> None:
    """Close the order's open (non-notify) follow-ups, with the command applied and its event.
    The caller's transaction holds the order's row lock."""
    kinds = list(order.followups.filter(state=FollowUp.State.OPEN).values_list("kind", flat=True))
    order.followups.filter(state=FollowUp.State.OPEN).update(
        state=FollowUp.State.RESOLVED, resolution="resolved", resolved_at=timezone.now())
    detail = f"Follow-up resolved by staff ({', '.join(FollowUp.Kind(k).label for k in kinds)})"
    audit.outcome, audit.outcome_detail = Outcome.APPLIED, detail
    audit.save(update_fields=["outcome", "outcome_detail", "updated_at"])
    # On the track the follow-up came from: the customer's email, or the parcel.
    step = "notify" if set(kinds) == {FollowUp.Kind.OUTCOME_UNTOLD} else "ship"
    saga_event_record(order, kind=SagaEvent.Kind.SIGNAL, step=step, detail=detail, operator_action_id=audit.pk,
                      key=f"action-{audit.pk}")


def _signal(audit: OperatorAction, workflow_id: str) -> None:
    command = OperatorCommand(action_id=audit.pk, reason=audit.reason)

    async def send(client):
        await client.get_workflow_handle(workflow_id).signal(audit.action, command)

    try:
        run_with_client(send, timeout=15)
    except Exception as exc:
        logger.warning("operator_action_signal_failed", action=audit.action, action_id=audit.pk,
                       workflow_id=workflow_id, error=str(exc) or type(exc).__name__)
        OperatorAction.objects.filter(pk=audit.pk).update(
            outcome=Outcome.FAILED, outcome_detail=f"Could not reach the saga: {exc}"
        )
        return
    logger.info("operator_action_sent", action=audit.action, action_id=audit.pk, workflow_id=workflow_id)
    # The saga may already have recorded applied/ignored: only move on from 'requested'.
    OperatorAction.objects.filter(pk=audit.pk, outcome=Outcome.REQUESTED).update(outcome=Outcome.SENT)


def operator_action_outcome_record(*, action_id: int, order_id: int, outcome: str, detail: str) -> bool:
    """The saga's answer to a command: applied, or ignored because its state had moved on.

    Returns whether the command is on record for this order (a signal sent by hand, with an
    id of no row, is answered in the saga's events only). The caller's transaction holds
    the order's row lock (saga_transition_record).
    """
    return bool(
        OperatorAction.objects.filter(pk=action_id, order_id=order_id).update(
            outcome=outcome, outcome_detail=detail[:2000]
        )
    )
