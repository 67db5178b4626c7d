"""Orders put where a saga would have left them, through the services its activities call.

For tests that need an order running, stuck, waiting on a follow-up or finished without
running a workflow. Every change goes through orders.services, so the order's status
follows the allowed-transitions map (orders.status) and the saga's events are the ones a
real saga leaves. Keys are derived from the order's workflow id, as the saga derives them.
"""

from orders.models import Order
from orders.saga.shared import SagaTransition
from orders.services import inventory, notifications, ordering, payments, shipping
from orders.services.saga import saga_step_failed, saga_step_started, saga_transition_record
from orders.status import SagaStatus


def _key(order: Order, step: str, suffix: str = "") -> str:
    return f"{order.workflow_id}:{step}{suffix}"


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


def order_completed(order: Order) -> None:
    """Every step succeeded: stock reserved then sold, one charge, shipped, customer told."""
    order_running(order)
    inventory.inventory_reserve(order_id=order.pk, idempotency_key=_key(order, "reserve"), attempt=1)
    payments.payment_charge(order_id=order.pk, idempotency_key=_key(order, "charge"), attempt=1)
    inventory.inventory_confirm(order_id=order.pk, idempotency_key=_key(order, "confirm"), attempt=1)
    shipping.shipment_arrange(order_id=order.pk, idempotency_key=_key(order, "ship"), attempt=1, resume_after=0,
                              on_parcel_booked=lambda parcel: None)
    notifications.customer_notify(order_id=order.pk, idempotency_key=_key(order, "notify"), attempt=1)
    order_finished(order, saga_status=SagaStatus.COMPLETED.value, detail="Order completed")


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
