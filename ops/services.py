"""Operator actions on sagas: retry, compensate, cancel, resend, resolve, retry compensation.

Each is a permission check, an audit row, then the Temporal signal carrying that row's id.
The workflow acts at most once per id and reports back (applied / ignored) through
operator_action_outcome_record, so the audit row ends up saying what really happened.
"""

import logging

from django.core.exceptions import PermissionDenied
from django.db import transaction

from orders.locks import lock_order
from orders.models import FollowUp, Order
from orders.saga.shared import CANCELLABLE_STEPS, OperatorCommand
from orders.status import TERMINAL_SAGA_STATUSES, SagaStatus
from orders.temporal_client import run_with_client

from .models import OperatorAction

logger = logging.getLogger(__name__)

Action = OperatorAction.Action
Outcome = OperatorAction.Outcome

ACTION_PERMISSIONS = {
    Action.RETRY: "ops.operate_saga",
    Action.COMPENSATE: "ops.operate_saga",
    Action.CANCEL: "ops.operate_saga",
    Action.RESEND: "ops.work_followups",
    Action.RESOLVED: "ops.work_followups",
    Action.RETRY_COMPENSATION: "ops.operate_saga",
}


class ActionNotAllowed(Exception):
    """The action does not fit the order's state; the message says why, for staff."""


def operator_action_check(order: Order, action: str) -> str | None:
    """Why `action` does not fit the order as the database shows it, or None if it does."""
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
    elif action in (Action.RESEND, Action.RESOLVED):
        if not order.followups.filter(state=FollowUp.State.OPEN).exists():
            return f"Order {order.number} has no open follow-up."
    else:
        return f"Unknown action {action!r}."
    return None


def operator_action_request(*, order_id: int, action: str, actor, reason: str = "") -> OperatorAction:
    """Check, audit and signal one operator action. Returns the audit row.

    Raises PermissionDenied or ActionNotAllowed (nothing is written then). Must not run
    inside an outer transaction: the saga has to see the audit row when the signal lands.
    Locks: the order row, while checking and writing the audit row.
    """
    permission = ACTION_PERMISSIONS.get(action)
    if permission is None:
        raise ActionNotAllowed(f"Unknown action {action!r}.")
    if actor is None or not actor.has_perm(permission):
        raise PermissionDenied(f"You are not allowed to {Action(action).label} sagas.")
    with transaction.atomic():
        order = lock_order(order_id)
        why_not = operator_action_check(order, action)
        if why_not:
            raise ActionNotAllowed(why_not)
        audit = OperatorAction.objects.create(order=order, action=action, actor=actor, reason=reason.strip()[:2000])
    _signal(audit, order.workflow_id)
    audit.refresh_from_db()
    return audit


def _signal(audit: OperatorAction, workflow_id: str) -> None:
    command = OperatorCommand(action_id=audit.pk, reason=audit.reason)

    async def send(client):
        await client.get_workflow_handle(workflow_id).signal(audit.action, command)

    try:
        run_with_client(send, timeout=15)
    except Exception as exc:
        logger.warning("signal %s to %s failed: %s", audit.action, workflow_id, exc)
        OperatorAction.objects.filter(pk=audit.pk).update(
            outcome=Outcome.FAILED, outcome_detail=f"Could not reach the saga: {exc}"
        )
        return
    # The saga may already have recorded applied/ignored: only move on from 'requested'.
    OperatorAction.objects.filter(pk=audit.pk, outcome=Outcome.REQUESTED).update(outcome=Outcome.SENT)


def operator_action_outcome_record(*, action_id: int, outcome: str, detail: str) -> None:
    """The saga's answer to an action: applied, or ignored because its state had moved on."""
    OperatorAction.objects.filter(pk=action_id).update(outcome=outcome, outcome_detail=detail[:2000])


def saga_retry(*, order_id: int, actor, reason: str = "") -> OperatorAction:
    return operator_action_request(order_id=order_id, action=Action.RETRY, actor=actor, reason=reason)


def saga_compensate(*, order_id: int, actor, reason: str = "") -> OperatorAction:
    return operator_action_request(order_id=order_id, action=Action.COMPENSATE, actor=actor, reason=reason)


def saga_retry_compensation(*, order_id: int, actor, reason: str = "") -> OperatorAction:
    """Run the compensations that could not complete again (the saga is compensation_stuck)."""
    return operator_action_request(order_id=order_id, action=Action.RETRY_COMPENSATION, actor=actor, reason=reason)


def order_cancel(*, order_id: int, actor, reason: str = "") -> OperatorAction:
    return operator_action_request(order_id=order_id, action=Action.CANCEL, actor=actor, reason=reason)


def followup_resend(*, order_id: int, actor, reason: str = "") -> OperatorAction:
    return operator_action_request(order_id=order_id, action=Action.RESEND, actor=actor, reason=reason)


def followup_resolve(*, order_id: int, actor, reason: str = "") -> OperatorAction:
    return operator_action_request(order_id=order_id, action=Action.RESOLVED, actor=actor, reason=reason)
