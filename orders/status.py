"""Order and saga states, and the one map of which order status may follow which."""

from django.db import models

from .saga.shared import STEP_LABELS, STUCK_SAGA_STATES, TERMINAL_SAGA_STATES, SagaState, StepName

# Built from the saga's own enums so the workflow (which cannot import Django) and the
# database agree on every value.
Step = models.TextChoices("Step", [(s.name, (s.value, STEP_LABELS[s])) for s in StepName])
_SAGA_STATUS_LABELS = {SagaState.NEEDS_FOLLOWUP: "needs follow-up", SagaState.COMPENSATION_STUCK: "compensation stuck"}
SagaStatus = models.TextChoices(
    "SagaStatus", [(s.name, (s.value, _SAGA_STATUS_LABELS.get(s, s.value))) for s in SagaState],
)
TERMINAL_SAGA_STATUSES = {s.value for s in TERMINAL_SAGA_STATES}
# Waiting for an operator (retry/compensate, or retry compensation): the stuck queue's statuses.
STUCK_SAGA_STATUSES = {s.value for s in STUCK_SAGA_STATES}


class OrderStatus(models.TextChoices):
    """What the order is, in words a customer understands."""

    PLACED = "placed"
    PROCESSING = "processing"
    COMPLETED = "completed"
    DELIVERED = "delivered"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"


# The order status a finished saga leaves behind.
ORDER_STATUS_AFTER_SAGA = {
    SagaState.COMPLETED.value: OrderStatus.COMPLETED,
    SagaState.COMPENSATED.value: OrderStatus.FAILED,
    SagaState.REJECTED.value: OrderStatus.REJECTED,
    SagaState.CANCELLED.value: OrderStatus.CANCELLED,
}

ALLOWED_TRANSITIONS: dict[str, set[str]] = {
    OrderStatus.PLACED: {OrderStatus.PROCESSING, OrderStatus.REJECTED, OrderStatus.CANCELLED, OrderStatus.FAILED},
    OrderStatus.PROCESSING: {
        OrderStatus.COMPLETED,
        # The parcel can arrive while the saga still waits on a follow-up (the customer not
        # notified): the saga's later "completed" is then behind, and a no-op.
        OrderStatus.DELIVERED,
        OrderStatus.FAILED,
        OrderStatus.CANCELLED,
        OrderStatus.REJECTED,
    },
    OrderStatus.COMPLETED: {OrderStatus.DELIVERED},
    OrderStatus.DELIVERED: set(),
    OrderStatus.FAILED: set(),
    OrderStatus.REJECTED: set(),
    OrderStatus.CANCELLED: set(),
}


def status_is_behind(status: str, current: str) -> bool:
    """Can the order get from `status` to `current` by allowed transitions (is `status` in its past)?"""
    seen, frontier = set(), [status]
    while frontier:
        for nxt in ALLOWED_TRANSITIONS[frontier.pop()] - seen:
            if nxt == current:
                return True
            seen.add(nxt)
            frontier.append(nxt)
    return False


class InvalidTransition(Exception):
    pass


def check_transition(current: str, new: str) -> None:
    if current == new:
        return
    if new not in ALLOWED_TRANSITIONS[current]:
        raise InvalidTransition(f"an order cannot go from {current} to {new}")
