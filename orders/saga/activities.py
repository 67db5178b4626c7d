"""The saga's activities: each loads by id and calls one service.

Activities are synchronous (the ORM is) and run in the worker's thread pool; stale
database connections are closed around each, as a request would.
Each step records 'started' (or 'retrying') before it acts and 'failed' when it raises;
the service records 'succeeded' in the same transaction as its effect.
"""

from collections.abc import Callable

from django.db import close_old_connections, transaction
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from ..errors import NON_RETRYABLE_ERRORS, OrderError

from ..services import inventory, notifications, ordering, payments, shipping
from ..services.saga import saga_step_failed, saga_step_started, saga_transition_record
from .shared import (
    DeliveryCheck,
    DeliveryStatus,
    SagaTransition,
    StepInput,
    StepResult,
)


def _recorded(inp: StepInput, body: Callable[[int], str], *, compensation: bool = False, started_detail: str = "",
              own_database_only: bool = False) -> StepResult:
    """Run a step's service between its 'started' and 'failed' events.

    A step that only touches our own database (`own_database_only`) takes milliseconds:
    its 'started' event commits together with its effect, saving a commit per step. A
    step that calls out (gateway, carrier, mail) commits 'started' first, so staff see it
    running while it waits.
    """
    info = activity.info()
    attempt = info.attempt
    # The activity id tells a second run of the step (an operator's retry) from a re-run
    # of the same attempt after a crash, which must write nothing new.
    round_key = f"{inp.idempotency_key}:{info.activity_id}"

    def started():
        saga_step_started(order_id=inp.order_id, step=inp.step.value, step_key=round_key, attempt=attempt,
                          compensation=compensation, detail=started_detail)

    close_old_connections()
    try:
        if own_database_only:
            with transaction.atomic():
                started()
                return StepResult(detail=body(attempt))
        started()
        return StepResult(detail=body(attempt))
    except Exception as exc:
        if own_database_only:
            started()  # it rolled back with the effect
        saga_step_failed(order_id=inp.order_id, step=inp.step.value, step_key=round_key, attempt=attempt,
                         error=f"{'Compensation failed: ' if compensation else ''}{exc}")
        if isinstance(exc, OrderError):
            # An outcome the saga expects (a decline, an outage): recorded above, so the
            # worker logs it quietly. Anything else is a bug and keeps its traceback.
            raise ApplicationError(
                str(exc), type=type(exc).__name__, non_retryable=type(exc).__name__ in NON_RETRYABLE_ERRORS,
                category=ApplicationErrorCategory.BENIGN,
            ) from exc
        raise
    finally:
        close_old_connections()


@activity.defn(name="validate_order")
def validate_order(inp: StepInput) -> StepResult:
    return _recorded(inp, lambda attempt: ordering.order_validate(order_id=inp.order_id, attempt=attempt),
                     own_database_only=True)


@activity.defn(name="reserve_inventory")
def reserve_inventory(inp: StepInput) -> StepResult:
    return _recorded(inp, lambda attempt: inventory.inventory_reserve(
        order_id=inp.order_id, idempotency_key=inp.idempotency_key, attempt=attempt), own_database_only=True)


@activity.defn(name="release_reservation")
def release_reservation(inp: StepInput) -> StepResult:
    return _recorded(inp, lambda attempt: inventory.reservation_release(
        order_id=inp.order_id, idempotency_key=inp.idempotency_key, attempt=attempt), compensation=True,
        own_database_only=True)


@activity.defn(name="charge_payment")
def charge_payment(inp: StepInput) -> StepResult:
    return _recorded(inp, lambda attempt: payments.payment_charge(
        order_id=inp.order_id, idempotency_key=inp.idempotency_key, attempt=attempt))


@activity.defn(name="refund_payment")
def refund_payment(inp: StepInput) -> StepResult:
    charge_key = inp.idempotency_key.removesuffix(":compensate")
    return _recorded(inp, lambda attempt: payments.payment_refund(
        order_id=inp.order_id, charge_key=charge_key, idempotency_key=inp.idempotency_key, attempt=attempt),
        compensation=True)


@activity.defn(name="confirm_inventory")
def confirm_inventory(inp: StepInput) -> StepResult:
    return _recorded(inp, lambda attempt: inventory.inventory_confirm(
        order_id=inp.order_id, idempotency_key=inp.idempotency_key, attempt=attempt), own_database_only=True)


@activity.defn(name="restock_inventory")
def restock_inventory(inp: StepInput) -> StepResult:
    return _recorded(inp, lambda attempt: inventory.inventory_restock(
        order_id=inp.order_id, idempotency_key=inp.idempotency_key, attempt=attempt), compensation=True,
        own_database_only=True)


@activity.defn(name="arrange_shipping")
def arrange_shipping(inp: StepInput) -> StepResult:
    # The last heartbeat of a failed attempt says how many parcels are already booked.
    details = activity.info().heartbeat_details
    resume_after = int(details[0]) if details else 0
    started = f"resuming after parcel {resume_after}" if resume_after else ""
    return _recorded(inp, lambda attempt: shipping.shipment_arrange(
        order_id=inp.order_id, idempotency_key=inp.idempotency_key, attempt=attempt,
        resume_after=resume_after, on_parcel_booked=activity.heartbeat), started_detail=started)


@activity.defn(name="cancel_shipment")
def cancel_shipment(inp: StepInput) -> StepResult:
    return _recorded(inp, lambda attempt: shipping.shipment_cancel(order_id=inp.order_id, attempt=attempt),
                     compensation=True)


@activity.defn(name="notify_customer")
def notify_customer(inp: StepInput) -> StepResult:
    return _recorded(inp, lambda attempt: notifications.customer_notify(
        order_id=inp.order_id, idempotency_key=inp.idempotency_key, attempt=attempt))


# --- bookkeeping (local activities) -------------------------------------------------


def _fallback_key() -> str:
    """A key for transitions from workflows started before the saga sent one: a local
    activity's id is its sequence number in the run, the same when a replay re-runs it."""
    info = activity.info()
    return f"{info.workflow_id}:{info.workflow_run_id}:la{info.activity_id}"


@activity.defn(name="record_transition")
def record_transition(transition: SagaTransition) -> None:
    from ops.services import operator_action_outcome_record  # ops builds on orders

    close_old_connections()
    try:
        saga_transition_record(transition, fallback_key=_fallback_key())
        if transition.action_id is not None:
            operator_action_outcome_record(
                action_id=transition.action_id, outcome=transition.action_outcome, detail=transition.detail
            )
    finally:
        close_old_connections()


@activity.defn(name="open_followup")
def open_followup(transition: SagaTransition) -> None:
    close_old_connections()
    try:
        notifications.followup_open(order_id=transition.order_id, reason=transition.detail,
                                    key=transition.key or _fallback_key())
    finally:
        close_old_connections()


@activity.defn(name="close_followup")
def close_followup(transition: SagaTransition) -> None:
    close_old_connections()
    try:
        notifications.followup_close(order_id=transition.order_id, resolution=transition.detail)
    finally:
        close_old_connections()


# --- delivery tracking ------------------------------------------------------------------


@activity.defn(name="check_delivery")
def check_delivery(check: DeliveryCheck) -> DeliveryStatus:
    close_old_connections()
    try:
        return DeliveryStatus(delivered=shipping.shipment_is_delivered(order_id=check.order_id))
    finally:
        close_old_connections()


@activity.defn(name="mark_delivered")
def mark_delivered(check: DeliveryCheck) -> None:
    close_old_connections()
    try:
        shipping.shipment_mark_delivered(order_id=check.order_id, source=check.source)
    finally:
        close_old_connections()


ORDERS_QUEUE_ACTIVITIES = [
    validate_order, reserve_inventory, release_reservation, confirm_inventory, restock_inventory,
    arrange_shipping, cancel_shipment, notify_customer, record_transition, open_followup, close_followup,
    check_delivery, mark_delivered,
]
PAYMENTS_QUEUE_ACTIVITIES = [charge_payment, refund_payment]
