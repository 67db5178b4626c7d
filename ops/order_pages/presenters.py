"""How the staff order pages word things: list-row labels, the operator buttons' copy and
confirmations, and what staff are told after an action. (The saga timeline's labels, tones
and times are template filters: ops.templatetags.saga_timeline.)
"""

from dataclasses import dataclass

from django.utils.functional import cached_property

from orders.models import OperatorAction, Order
from orders.saga.shared import STEP_LABELS
from orders.status import OrderStatus, SagaStatus

from .selectors import OrderActions

STATUS_LABELS = {value: str(label) for value, label in OrderStatus.choices}
SAGA_STATUS_LABELS = {value: str(label) for value, label in SagaStatus.choices}
STEP_LABEL_BY_VALUE = {s.value: label for s, label in STEP_LABELS.items()}


def order_row_present(order: Order) -> Order:
    """Plain-string labels for a list row: get_FOO_display() per cell is a third of the
    page's rendering time at 50 rows (it rebuilds the choices dict on every call)."""
    order.status_label = STATUS_LABELS.get(order.status, order.status)
    order.saga_status_label = SAGA_STATUS_LABELS.get(order.saga_status, order.saga_status)
    order.current_step_label = STEP_LABEL_BY_VALUE.get(order.current_step, order.current_step)
    return order


# --- operator buttons -------------------------------------------------------------------

ACTION_COPY = {
    # action: (button label, what happens, confirmation question)
    "retry": ("Retry step", "runs the failed step again",
              "Retry the {step} step of {number}? The saga runs the failed step again."),
    "compensate": ("Compensate", "rolls back every completed step and ends the order as failed",
                   ("Compensate {number}? Every completed step is undone (refund, restock, release) "
                    "and the order ends as failed.")),
    "cancel": ("Cancel order", "stops the saga and undoes what it did",
               "Cancel {number}? The saga stops and undoes every completed step; the customer is not charged."),
    "resend": ("Resend notification", "tries to notify the customer again",
               "Resend the notification for {number} to {email}?"),
    "resolved": ("Mark follow-up resolved", "closes the follow-up: staff reached the customer another way",
                 "Mark the follow-up of {number} as resolved? The saga finishes without notifying again."),
    "retry_compensation": ("Retry compensation", "runs the compensations that could not complete again",
                           "Retry the stuck compensation of {number}? The saga runs the undo that failed again."),
    # A shipped order's delivery (its tracker, not the saga).
    "mark_delivered": ("Mark delivered", "the parcel arrived: ends its tracking and emails the customer",
                       "Mark {number} as delivered? Tracking ends and {email} is told it arrived."),
    "lost_refund": ("Report lost: refund", "ends tracking; opens a refund-due follow-up",
                    "Report the parcel of {number} lost and owe the customer a refund?"),
    "lost_reship": ("Report lost: re-ship", "ends tracking; opens a re-ship follow-up",
                    "Report the parcel of {number} lost and owe the customer a new parcel?"),
}
DANGEROUS_ACTIONS = frozenset({"compensate", "cancel", "lost_refund", "lost_reship"})


@dataclass
class ActionOption:
    action: str
    label: str
    explanation: str
    confirm: str
    danger: bool


@dataclass
class ActionButtons:
    """What templates/orders/partials/order_actions.html shows."""

    fitting: OrderActions

    @property
    def order(self) -> Order:
        return self.fitting.order

    @property
    def may_act(self) -> bool:
        return self.fitting.may_act

    @cached_property
    def options(self) -> list[ActionOption]:
        order = self.order
        step_label = STEP_LABEL_BY_VALUE.get(order.current_step, order.current_step or "current")
        options = []
        for action in self.fitting.actions:
            label, explanation, confirm = ACTION_COPY[action]
            options.append(ActionOption(
                action=action, label=label, explanation=explanation,
                confirm=confirm.format(step=step_label.lower(), number=order.number, email=order.customer_email),
                danger=action in DANGEROUS_ACTIONS,
            ))
        return options


# --- after an action ----------------------------------------------------------------------

SUCCESS_MESSAGES = {
    "retry": "Retry sent to the saga of {number}: the failed step runs again.",
    "compensate": "Compensation sent to the saga of {number}: completed steps are being undone.",
    "cancel": "Cancellation sent to the saga of {number}: it stops and undoes what it did.",
    "resend": "Resend sent to the saga of {number}: the customer is being notified again.",
    "resolved": "Follow-up of {number} marked resolved: the saga finishes.",
    "retry_compensation": "Retry sent to the saga of {number}: the compensation that failed runs again.",
    "mark_delivered": "Delivery of {number} sent to its tracker: the order is marked delivered.",
    "lost_refund": "Loss of {number}'s parcel sent to its tracker: a refund-due follow-up opens.",
    "lost_reship": "Loss of {number}'s parcel sent to its tracker: a re-ship follow-up opens.",
}


def action_outcome_message(audit: OperatorAction) -> str:
    number, what = audit.order.number, audit.get_action_display().lower()
    if audit.outcome == OperatorAction.Outcome.FAILED:
        # The technical reason is in the audit row; the message says what to do.
        return (f"The {what} for {number} is in the audit log but could not be sent: the saga service "
                f"did not answer. Nothing changed; try again in a moment.")
    if audit.outcome == OperatorAction.Outcome.IGNORED:
        return f"The saga of {number} ignored the {what}: {audit.outcome_detail}"
    return SUCCESS_MESSAGES[audit.action].format(number=number)
