"""Operator actions on sagas: retry, compensate, cancel, resend, resolve, retry compensation.

Each is a permission check (here: who may do what is a staff concern), then the command
itself (orders.services.commands: checked against the order's state, recorded, and
signalled to the saga with the record's id).
"""

from django.core.exceptions import PermissionDenied

from orders.models import FollowUp, OperatorAction
from orders.services.commands import ActionNotAllowed, operator_action_send

from .metrics import operator_action_counted
from .permissions import OPERATE_SAGAS, WORK_FOLLOWUPS

__all__ = [
    "ACTION_PERMISSIONS", "ActionNotAllowed", "operator_action_request", "saga_retry", "saga_compensate",
    "order_cancel", "followup_resend", "followup_resolve", "delivery_mark_delivered", "delivery_report_lost",
]

Action = OperatorAction.Action

ACTION_PERMISSIONS = {
    Action.RETRY: OPERATE_SAGAS,
    Action.COMPENSATE: OPERATE_SAGAS,
    Action.CANCEL: OPERATE_SAGAS,
    Action.RESEND: WORK_FOLLOWUPS,
    Action.RESOLVED: WORK_FOLLOWUPS,
    Action.RETRY_COMPENSATION: OPERATE_SAGAS,
    Action.MARK_DELIVERED: OPERATE_SAGAS,
    Action.LOST_REFUND: OPERATE_SAGAS,
    Action.LOST_RESHIP: OPERATE_SAGAS,
}


def operator_action_request(*, order_id: int, action: str, actor, reason: str = "") -> OperatorAction:
    """Check the actor's permission, then send the command. Returns its record.

    Raises PermissionDenied, Order.DoesNotExist or ActionNotAllowed (nothing is written
    then). Must not run inside an outer transaction: the saga has to see the record when
    the signal lands. Locks: the order row (orders.services.commands.operator_action_send).
    """
    permission = ACTION_PERMISSIONS.get(action)
    if permission is None:
        raise ActionNotAllowed(f"Unknown action {action!r}.")
    if actor is None or not actor.has_perm(permission):
        operator_action_counted(action=action, outcome="denied")
        raise PermissionDenied(f"You are not allowed to {Action(action).label} sagas.")
    try:
        if action in (Action.RESEND, Action.RESOLVED):
            _check_claim(order_id=order_id, actor=actor)
        audit = operator_action_send(order_id=order_id, action=action, actor=actor, reason=reason)
    except ActionNotAllowed:
        operator_action_counted(action=action, outcome="refused")
        raise
    # Delivered or not; the saga's own answer (applied, ignored) is counted where it is
    # recorded (orders.metrics.OPERATOR_ANSWERS).
    failed = audit.outcome == OperatorAction.Outcome.FAILED
    operator_action_counted(action=action, outcome="failed" if failed else "sent")
    return audit


def _check_claim(*, order_id: int, actor) -> None:
    """A claimed follow-up is worked by its holder (or an admin, who can also release it):
    two people calling or emailing the same customer is what claiming is for."""
    holder = (FollowUp.objects.filter(order_id=order_id, state=FollowUp.State.OPEN)
              .exclude(claimed_by=None).select_related("claimed_by", "order").first())
    if holder is not None and holder.claimed_by_id != actor.pk and not actor.is_superuser:
        raise ActionNotAllowed(
            f"The follow-up for {holder.order.number} is claimed by {holder.claimed_by.get_username()}: "
            "ask them, or have them (or an admin) release it first."
        )


def saga_retry(*, order_id: int, actor, reason: str = "") -> OperatorAction:
    return operator_action_request(order_id=order_id, action=Action.RETRY, actor=actor, reason=reason)


def saga_compensate(*, order_id: int, actor, reason: str = "") -> OperatorAction:
    return operator_action_request(order_id=order_id, action=Action.COMPENSATE, actor=actor, reason=reason)


def saga_retry_compensation(*, order_id: int, actor, reason: str = "") -> OperatorAction:
    """Run the compensations that could not complete again (the saga is compensation_stuck)."""
    return operator_action_request(order_id=order_id, action=Action.RETRY_COMPENSATION, actor=actor, reason=reason)


def order_cancel(*, order_id: int, actor, reason: str = "") -> OperatorAction:
    return operator_action_request(order_id=order_id, action=Action.CANCEL, actor=actor, reason=reason)


def delivery_mark_delivered(*, order_id: int, actor, reason: str = "") -> OperatorAction:
    """The parcel arrived (the customer says so, say): ends its delivery tracker."""
    return operator_action_request(order_id=order_id, action=Action.MARK_DELIVERED, actor=actor, reason=reason)


def delivery_report_lost(*, order_id: int, actor, remedy: str, reason: str = "") -> OperatorAction:
    """The parcel is lost: end its tracker and open what is owed, a refund or a new parcel
    (remedy "refund" or "reship"). Raises ActionNotAllowed for another remedy."""
    actions = {"refund": Action.LOST_REFUND, "reship": Action.LOST_RESHIP}
    if remedy not in actions:
        raise ActionNotAllowed("Choose what the customer gets for a lost parcel: a refund or a new parcel.")
    return operator_action_request(order_id=order_id, action=actions[remedy], actor=actor, reason=reason)


def followup_resend(*, order_id: int, actor, reason: str = "") -> OperatorAction:
    return operator_action_request(order_id=order_id, action=Action.RESEND, actor=actor, reason=reason)


def followup_resolve(*, order_id: int, actor, reason: str = "") -> OperatorAction:
    return operator_action_request(order_id=order_id, action=Action.RESOLVED, actor=actor, reason=reason)
