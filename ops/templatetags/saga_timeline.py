"""How the saga timeline reads on the staff pages (templates/orders/partials/saga_*.html):
step and compensation names, each state's words and badge tone, event kinds and times.
The timeline itself (orders.selectors.timeline) is data only."""

from django import template
from django.utils import timezone

from orders.models import SagaEvent
from orders.saga.shared import RETURN_STEP_LABELS, STEP_LABELS, StepName
from orders.status import STUCK_SAGA_STATUSES, SagaStatus

register = template.Library()

STEP_LABEL_BY_VALUE = {s.value: label for s, label in STEP_LABELS.items()}
COMPENSATION_LABELS = {
    StepName.RESERVE.value: "Release reservation",
    StepName.CHARGE.value: "Refund payment",
    StepName.CONFIRM.value: "Restock inventory",
    StepName.SHIP.value: "Cancel shipment",
}
# How each state reads, and the badge tone it gets (the text always says the state).
STATE_LABELS = {
    "pending": ("not started", ""),
    "running": ("running", "info"),
    "retrying": ("retrying", "warn"),
    "failed": ("failed", "bad"),
    "stuck": ("stuck: waiting for an operator", "bad"),
    "succeeded": ("succeeded", "ok"),
    "compensating": ("being undone", "warn"),
    "compensated": ("undone", "info"),
    "followup": ("needs follow-up", "warn"),
    "resolved": ("resolved by staff", "ok"),
    "skipped": ("not run", ""),
    "refused": ("refused by the carrier", "bad"),
    "nothing_to_undo": ("nothing to undo", ""),
}
EVENT_KIND_LABELS = dict(SagaEvent.Kind.choices)
WAITING_SAGA_STATUSES = STUCK_SAGA_STATUSES | {SagaStatus.NEEDS_FOLLOWUP.value}


@register.filter
def track_label(track) -> str:
    """A step's name, or what undoing it means ("Refund payment")."""
    if track.compensation:
        return COMPENSATION_LABELS.get(track.step, f"Undo {track.step}")
    return STEP_LABEL_BY_VALUE.get(track.step, track.step)


RETURN_STEP_LABEL_BY_VALUE = {s.value: label for s, label in RETURN_STEP_LABELS.items()}


@register.filter
def return_step_label(step: str) -> str:
    """A return saga's step (its events are in the saga-level list): named there; "" otherwise."""
    return RETURN_STEP_LABEL_BY_VALUE.get(step, "")


@register.filter
def state_label(state: str) -> str:
    return STATE_LABELS.get(state, (state, ""))[0]


@register.filter
def state_tone(state: str) -> str:
    return STATE_LABELS.get(state, (state, ""))[1]


@register.filter
def event_kind_label(kind: str) -> str:
    return EVENT_KIND_LABELS.get(kind, kind)


@register.filter
def clock(moment) -> str:
    """Local time to the millisecond. A plain strftime: the date filter costs more than the
    rest of an event's row."""
    return timezone.localtime(moment).strftime("%H:%M:%S.%f")[:12]


@register.simple_tag
def saga_status_label(order, timeline=None) -> str:
    """The saga's status in words; "compensated" only when a compensation undid something."""
    label = order.get_saga_status_display()
    # Without a timeline (a page that does not load one) the status reads as stored.
    if order.saga_status == "compensated" and not getattr(timeline, "undid_something", True):
        return "failed, nothing to undo"
    return label


@register.filter
def saga_waiting(order) -> bool:
    """Whether the saga waits for staff (an operator's retry or compensate, or a follow-up):
    only then is its last error news."""
    return order.saga_status in WAITING_SAGA_STATUSES
