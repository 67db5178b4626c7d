"""Orders put where a saga would have left them, through the services its activities call.

For tests that need an order running, stuck, waiting on a follow-up or finished without
running a workflow. Every change goes through orders.services, so the order's status
follows the allowed-transitions map (orders.status) and the saga's events are the ones a
real saga leaves. Keys are derived from the order's workflow id, as the saga derives them.
"""

from contextlib import contextmanager
from datetime import timedelta
from unittest import mock

from django.utils import timezone

from orders.models import Order
from orders.saga.shared import SagaTransition
from orders.services import inventory, notifications, ordering, payments, shipping
from orders.services.saga import saga_step_failed, saga_step_started, saga_transition_record
from orders.status import SagaStatus


FORWARD_STEPS = ("validate", "reserve", "charge", "confirm", "ship", "notify")


def _key(order: Order, step: str, suffix: str = "") -> str:
    return f"{order.workflow_id}:{step}{suffix}"


@contextmanager
def clock_set_back(delta: timedelta):
    """Run the services as if `delta` ago: the clock is outside the system, so a test may set
    it back (an order stuck for 90 minutes) instead of rewriting the timestamps the services stamp."""
    real_now = timezone.now
    with mock.patch("django.utils.timezone.now", side_effect=lambda: real_now() - delta):
        yield


def order_running(order: Order, *, step: str = "") -> None:
    """Validated (processing, saga running), and `step` under way if given."""
    ordering.order_validate(order_id=order.pk, attempt=1)
    if step and step != "validate":
        saga_step_started(order_id=order.pk, step=step, step_key=_key(order, step), attempt=1, compensation=False)


def order_stuck(order: Order, *, step: str, error: str, attempts: int = 3) -> None:
    """Running, then `step` failed `attempts` times and the saga gave up waiting for an operator."""
    order_running(order, step=step)
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            saga_step_started(order_id=order.pk, step=step, step_key=_key(order, step), attempt=attempt,
                              compensation=False)
        saga_step_failed(order_id=order.pk, step=step, step_key=_key(order, step), attempt=attempt, error=error)
    saga_transition_record(SagaTransition(
        order_id=order.pk, kind="stuck", step=step, saga_status=SagaStatus.STUCK.value,
        detail=f"{error} (gave up after {attempts} attempts)",
    ))


def order_finished(order: Order, *, saga_status: str, detail: str = "") -> None:
    """The saga's last word: its terminal status, and the order status that goes with it."""
    saga_transition_record(SagaTransition(order_id=order.pk, kind="finished", saga_status=saga_status, detail=detail))


def order_advanced(order: Order, *, through: str) -> None:
    """Running, and every forward step up to and including `through` succeeded, in the saga's order."""
    order_running(order)
    steps = {
        "reserve": lambda: inventory.inventory_reserve(order_id=order.pk, idempotency_key=_key(order, "reserve"),
                                                       attempt=1),
        "charge": lambda: payments.payment_charge(order_id=order.pk, idempotency_key=_key(order, "charge"), attempt=1),
        "confirm": lambda: inventory.inventory_confirm(order_id=order.pk, idempotency_key=_key(order, "confirm"),
                                                       attempt=1),
        "ship": lambda: shipping.shipment_arrange(order_id=order.pk, idempotency_key=_key(order, "ship"), attempt=1,
                                                  resume_after=0, on_parcel_booked=lambda parcel: None),
        "notify": lambda: notifications.customer_notify(order_id=order.pk, idempotency_key=_key(order, "notify"),
                                                   attempt=1),
    }
    for step in FORWARD_STEPS[1:FORWARD_STEPS.index(through) + 1]:
        steps[step]()


def order_completed(order: Order) -> None:
    """Every step succeeded: stock reserved then sold, one charge, shipped, customer told."""
    order_advanced(order, through="notify")
    order_finished(order, saga_status=SagaStatus.COMPLETED.value, detail="Order completed")


def order_delivered(order: Order, *, source: str = "carrier") -> None:
    """Completed, then the carrier reported the parcel delivered (the delivery tracker's service)."""
    order_completed(order)
    shipping.shipment_mark_delivered(order_id=order.pk, source=source)


def _compensate(order: Order, done: tuple[str, ...], *, failing_once: dict[str, str]) -> None:
    """Undo the `done` steps in reverse, as the saga's compensation activities do; a step in
    `failing_once` fails its first compensation attempt with that error, the second succeeds."""
    undo = {
        "reserve": lambda attempt: inventory.reservation_release(
            order_id=order.pk, idempotency_key=_key(order, "reserve", ":compensate"), attempt=attempt),
        "charge": lambda attempt: payments.payment_refund(
            order_id=order.pk, charge_key=_key(order, "charge"), idempotency_key=_key(order, "charge", ":compensate"),
            attempt=attempt),
        "confirm": lambda attempt: inventory.inventory_restock(
            order_id=order.pk, idempotency_key=_key(order, "confirm", ":compensate"), attempt=attempt),
        "ship": lambda attempt: shipping.shipment_cancel(order_id=order.pk, attempt=attempt),
    }
    to_undo = [step for step in done if step in undo]
    if to_undo:
        saga_transition_record(SagaTransition(order_id=order.pk, kind="", saga_status=SagaStatus.COMPENSATING.value))
    for step in reversed(to_undo):
        attempt, undo_key = 1, _key(order, step, ":compensate")
        saga_step_started(order_id=order.pk, step=step, step_key=undo_key, attempt=attempt, compensation=True)
        if step in failing_once:
            saga_step_failed(order_id=order.pk, step=step, step_key=undo_key, attempt=attempt,
                             error=f"Compensation failed: {failing_once[step]}")
            attempt = 2
            saga_step_started(order_id=order.pk, step=step, step_key=undo_key, attempt=attempt,
                              compensation=True)
        undo[step](attempt)


def order_compensated(order: Order, *, failed_step: str, error: str,
                      failing_once: dict[str, str] | None = None) -> None:
    """`failed_step` failed for good (a decline, a refusal): every step before it undone in
    reverse, the saga compensated and the order failed."""
    done = FORWARD_STEPS[:FORWARD_STEPS.index(failed_step)]
    order_advanced(order, through=done[-1])
    saga_step_started(order_id=order.pk, step=failed_step, step_key=_key(order, failed_step), attempt=1, compensation=False)
    saga_step_failed(order_id=order.pk, step=failed_step, step_key=_key(order, failed_step), attempt=1, error=error)
    _compensate(order, done, failing_once=failing_once or {})
    order_finished(order, saga_status=SagaStatus.COMPENSATED.value, detail=error)


def order_cancelled(order: Order, *, after: str = "reserve", reason: str = "Cancelled by staff") -> None:
    """Staff cancelled the saga once `after` had succeeded: what was done undone, the order cancelled."""
    order_advanced(order, through=after)
    _compensate(order, FORWARD_STEPS[:FORWARD_STEPS.index(after) + 1], failing_once={})
    order_finished(order, saga_status=SagaStatus.CANCELLED.value, detail=reason)


def order_rejected(order: Order, *, error: str = "Order is invalid: the order has no lines") -> None:
    """Validation failed for good: nothing done, the order rejected."""
    saga_step_started(order_id=order.pk, step="validate", step_key=_key(order, "validate"), attempt=1, compensation=False)
    saga_step_failed(order_id=order.pk, step="validate", step_key=_key(order, "validate"), attempt=1, error=error)
    order_finished(order, saga_status=SagaStatus.REJECTED.value, detail=error)


def order_compensated_at_confirm(order: Order, *, error: str = "Inventory confirmation failed") -> None:
    """Confirming the stock failed for good: the charge refunded, the reservation released."""
    order_running(order)
    inventory.inventory_reserve(order_id=order.pk, idempotency_key=_key(order, "reserve"), attempt=1)
    charge_key = _key(order, "charge")
    payments.payment_charge(order_id=order.pk, idempotency_key=charge_key, attempt=1)
    saga_step_failed(order_id=order.pk, step="confirm", step_key=_key(order, "confirm"), attempt=1, error=error)
    payments.payment_refund(order_id=order.pk, charge_key=charge_key, idempotency_key=_key(order, "charge", ":compensate"),
                            attempt=1)
    inventory.reservation_release(order_id=order.pk, idempotency_key=_key(order, "reserve", ":compensate"), attempt=1)
    order_finished(order, saga_status=SagaStatus.COMPENSATED.value, detail=error)


def order_needs_followup(order: Order, *, reason: str) -> None:
    """At the notify step the customer could not be told: on the follow-up queue. The order
    stays processing, as the app leaves it until the saga finishes."""
    order_running(order, step="notify")
    notifications.followup_open(order_id=order.pk, reason=reason)
