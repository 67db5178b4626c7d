"""How the staff order pages word things: list-row labels, the operator buttons' copy and
confirmations, and what staff are told after an action. (The saga timeline's labels, tones
and times are template filters: ops.templatetags.saga_timeline.)
"""

from dataclasses import dataclass

from django.utils.functional import cached_property

from django.template.defaultfilters import pluralize

from orders.models import OperatorAction, Order
from orders.selectors.preview import (
    BulkRollbackPreview, RollbackOutcome, RollbackPreview, rollback_preview,
)
from orders.saga.shared import STEP_LABELS
from orders.status import TERMINAL_SAGA_STATUSES, OrderStatus, SagaStatus

from ..http import ReversedOnce
from .selectors import OrderActions

STATUS_LABELS = {value: str(label) for value, label in OrderStatus.choices}
SAGA_STATUS_LABELS = {value: str(label) for value, label in SagaStatus.choices}
STEP_LABEL_BY_VALUE = {s.value: label for s, label in STEP_LABELS.items()}


def order_row_present(order: Order) -> Order:
    """Plain-string labels for a list row: get_FOO_display() per cell is a third of the
    page's rendering time at 50 rows (it rebuilds the choices dict on every call)."""
    order.status_label = STATUS_LABELS.get(order.status, order.status)
    order.saga_status_label = SAGA_STATUS_LABELS.get(order.saga_status, order.saga_status)
    # A finished saga has no current step ("Notify customer" on a completed order misleads).
    finished = order.saga_status in TERMINAL_SAGA_STATUSES
    order.current_step_label = "" if finished else STEP_LABEL_BY_VALUE.get(order.current_step, order.current_step)
    return order


# --- operator buttons -------------------------------------------------------------------

ACTION_COPY = {
    # action: (button label, what happens, confirmation question)
    "retry": ("Retry step", "runs the failed step again",
              "Retry the {step} step of {number}? The saga runs the failed step again."),
    # Compensate and cancel both roll back; they differ in why and in how the order ends,
    # so they look and read differently (a rollback preview follows each question).
    "compensate": ("Compensate (roll back)", "gives up on the stuck step: undoes what was done, the order ends as failed",
                   "Give up on the {step} step of {number} and roll back? The order ends as failed."),
    "cancel": ("Cancel order", "calls the order off for the customer: undoes what was done, the order ends as cancelled",
               "Cancel {number}? The saga stops and the order ends as cancelled."),
    "resend": ("Resend notification", "tries to notify the customer again",
               "Resend the notification for {number} to {email}?"),
    "resolved": ("Mark follow-up resolved", "closes the follow-up: staff reached the customer another way",
                 "Mark the follow-up of {number} as resolved? Nothing more is sent to the customer."),
    "retry_compensation": ("Retry compensation", "runs the compensations that could not complete again",
                           "Retry the stuck compensation of {number}? The saga runs the undo that failed again."),
    # A shipped order's delivery (its tracker, not the saga).
    "mark_delivered": ("Mark delivered", "the parcel arrived: ends its tracking and emails the customer",
                       "Mark {number} as delivered? Tracking ends and {email} is told it arrived."),
    "lost_refund": ("Report lost: refund", "ends tracking; refunds the customer what they paid",
                    "Report the parcel of {number} lost and owe the customer a refund?"),
    "lost_reship": ("Report lost: re-ship", "ends tracking; opens a re-ship follow-up",
                    "Report the parcel of {number} lost and owe the customer a new parcel?"),
}
# The look of each irreversible action's button: cancel is the red one.
BUTTON_STYLE = {"compensate": "warning", "cancel": "danger", "lost_refund": "warning", "lost_reship": "warning"}
ROLLBACK_ACTIONS = frozenset({"compensate", "cancel"})


class OrderLinks:
    """The order pages' URLs for a list of orders, reversed once per list (ReversedOnce)."""

    def __init__(self) -> None:
        self.detail = ReversedOnce("orders:detail", ReversedOnce.INT)
        self._action = ReversedOnce("orders:action", ReversedOnce.INT, ReversedOnce.WORD)

    def action(self, pk: int, action: str) -> str:
        return self._action(int(pk), action)


def rollback_lines(preview: RollbackPreview) -> list[str]:
    """What a rollback would do now, a line each, from the ledgers (orders.selectors.preview)."""
    lines = []
    if preview.charged:
        lines.append(f"Refund {preview.refund} {preview.currency} to the customer (they were charged)")
    else:
        lines.append("Nothing to refund: the customer has not been charged")
    if preview.restock:
        lines.append(f"Restock {preview.items_to_restock} item{pluralize(preview.items_to_restock)}: "
                     + ", ".join(f"{line.quantity} × {line.product}" for line in preview.restock))
    if preview.release:
        lines.append(f"Release the reservation of {preview.items_to_release} item{pluralize(preview.items_to_release)}: "
                     + ", ".join(f"{line.quantity} × {line.product}" for line in preview.release))
    if not preview.restock and not preview.release:
        lines.append("No stock to give back: none is held")
    if preview.parcels_to_cancel:
        lines.append(f"Cancel {preview.parcels_to_cancel} booked parcel{pluralize(preview.parcels_to_cancel)} with the carrier")
    lines.append("No email to the customer: the saga sends none when it rolls back")
    return lines


def rollback_outcome_lines(outcome: RollbackOutcome) -> list[str]:
    """What a finished rollback did, a line each."""
    if outcome.nothing_undone:
        return ["Nothing had to be undone: no money, stock or parcel was held", "No email was sent to the customer"]
    lines = []
    lines.append(f"Refunded {outcome.refunded} {outcome.currency}" if outcome.refunded else "Nothing refunded")
    if outcome.restocked:
        lines.append(f"Restocked {outcome.restocked} item{pluralize(outcome.restocked)}")
    if outcome.released:
        lines.append(f"Released the reservation of {outcome.released} item{pluralize(outcome.released)}")
    if outcome.parcels_cancelled:
        lines.append(f"Cancelled {outcome.parcels_cancelled} parcel{pluralize(outcome.parcels_cancelled)}")
    lines.append("No email was sent to the customer")
    return lines


def bulk_rollback_lines(preview: BulkRollbackPreview) -> list[str]:
    refunds = " + ".join(f"{amount} {currency}" for currency, amount in preview.refunds.items())
    lines = [f"Refund {refunds} to {preview.charged_orders} customer{pluralize(preview.charged_orders)}" if refunds
             else "Nothing to refund: none of these customers has been charged"]
    lines.append(f"Restock {preview.items_to_restock} item{pluralize(preview.items_to_restock)}")
    lines.append(f"Release reservations of {preview.items_to_release} item{pluralize(preview.items_to_release)}")
    lines.append(f"Cancel {preview.parcels_to_cancel} booked parcel{pluralize(preview.parcels_to_cancel)}")
    lines.append("No email to the customers: the saga sends none when it rolls back")
    return lines


@dataclass
class ActionOption:
    action: str
    label: str
    explanation: str
    confirm: str
    style: str  # the button's class: primary, warning (compensate) or danger (cancel)


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
    def rollback(self) -> RollbackPreview | None:
        """What compensate or cancel would undo now, when one of them is offered."""
        if not ROLLBACK_ACTIONS.intersection(self.fitting.actions):
            return None
        return rollback_preview(self.order.pk)

    @cached_property
    def rollback_lines(self) -> list[str]:
        return rollback_lines(self.rollback) if self.rollback else []

    @cached_property
    def options(self) -> list[ActionOption]:
        order = self.order
        step_label = STEP_LABEL_BY_VALUE.get(order.current_step, order.current_step or "current")
        options = []
        for action in self.fitting.actions:
            label, explanation, confirm = ACTION_COPY[action]
            confirm = confirm.format(step=step_label.lower(), number=order.number, email=order.customer_email)
            if action in ROLLBACK_ACTIONS and self.rollback_lines:
                confirm += "\n\nThis will, as of now:\n" + "\n".join(f"• {line}" for line in self.rollback_lines)
            options.append(ActionOption(
                action=action, label=label, explanation=explanation, confirm=confirm,
                style=BUTTON_STYLE.get(action, "primary"),
            ))
        return options


# --- after an action ----------------------------------------------------------------------

SUCCESS_MESSAGES = {
    "retry": "Retry sent to the saga of {number}: the failed step runs again.",
    "compensate": ("Compensation sent to the saga of {number}: completed steps are being undone; "
                   "what was undone shows under the timeline when it ends."),
    "cancel": ("Cancellation sent to the saga of {number}: it stops and undoes what it did; "
               "what was undone shows under the timeline when it ends."),
    "resend": "Resend sent to the saga of {number}: the customer is being notified again.",
    "resolved": "Follow-up of {number} marked resolved: nothing more is sent to the customer.",
    "retry_compensation": "Retry sent to the saga of {number}: the compensation that failed runs again.",
    "mark_delivered": "Delivery of {number} sent to its tracker: the order is marked delivered.",
    "lost_refund": "Loss of {number}'s parcel sent to its tracker: the customer's refund starts.",
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
