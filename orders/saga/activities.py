"""The saga's activities: each loads by id and calls one service.

Activities are synchronous (the ORM is) and run in the worker's thread pool; stale
database connections are closed around each, as a request would.
Each step records 'started' (or 'retrying') before it acts and 'failed' when it raises;
the service records 'succeeded' in the same transaction as its effect.

Steps that call out (charge, ship, notify) heartbeat from a background thread while the
call runs, so a killed worker is noticed within the heartbeat timeout. Cancellation is
cooperative: a step checks before it acts and otherwise finishes what it started (its
effect is then known to the compensation) before reporting the cancel.
Errors of our own infrastructure (database, Redis) are raised as InfrastructureUnavailable
and never recorded as the step's failure: the saga runs the step again.
"""

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator

from django.db import InterfaceError, OperationalError, close_old_connections, transaction
from redis.exceptions import RedisError
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory, CancelledError

from ..errors import NON_RETRYABLE_ERRORS, InfrastructureUnavailable, OrderError

from ..services import inventory, notifications, ordering, payments, shipping
from ..services.saga import saga_step_failed, saga_step_started, saga_transition_record
from .shared import (
    DeliveryCheck,
    DeliveryStatus,
    SagaTransition,
    StepInput,
    StepResult,
)

INFRASTRUCTURE_ERRORS = (OperationalError, InterfaceError, RedisError)


def _infrastructure_error(exc: BaseException) -> BaseException | None:
    """The database or Redis error behind `exc` (itself or a cause), if there is one."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, INFRASTRUCTURE_ERRORS):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


class _Heartbeat:
    """Heartbeats every `interval` from a background thread while the step's call runs,
    repeating the latest details (shipping's last booked parcel), so they are never lost."""

    def __init__(self) -> None:
        self.details: tuple = ()
        self._stop = threading.Event()

    def update(self, *details) -> None:
        self.details = details
        activity.heartbeat(*details)

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                activity.heartbeat(*self.details)
            except Exception:  # the activity is finishing; nothing left to keep alive
                return

    @contextlib.contextmanager
    def running(self) -> Iterator["_Heartbeat"]:
        timeout = activity.info().heartbeat_timeout
        interval = timeout.total_seconds() / 4 if timeout else 5.0
        # The thread needs the activity's context to reach its heartbeat function.
        thread = threading.Thread(target=contextvars.copy_context().run, args=(self._run, interval),
                                  name="activity-heartbeat", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=5)


def _recorded(inp: StepInput, body: Callable[[int], str], *, compensation: bool = False, started_detail: str = "",
              own_database_only: bool = False, heartbeat: _Heartbeat | None = None) -> StepResult:
    """Run a step's service between its 'started' and 'failed' events.

    A step that only touches our own database (`own_database_only`) takes milliseconds:
    its 'started' event commits together with its effect, saving a commit per step. A
    step that calls out (gateway, carrier, mail) commits 'started' first, so staff see it
    running while it waits, and heartbeats (`heartbeat`) meanwhile.
    """
    close_old_connections()
    try:
        with heartbeat.running() if heartbeat else contextlib.nullcontext(), \
                activity.shield_thread_cancel_exception():
            if activity.is_cancelled():
                raise CancelledError("cancelled before it acted")
            return _record_step(inp, body, compensation=compensation, started_detail=started_detail,
                                own_database_only=own_database_only)
    finally:
        close_old_connections()


def _record_step(inp: StepInput, body: Callable[[int], str], *, compensation: bool, started_detail: str,
                 own_database_only: bool) -> StepResult:
    attempt = activity.info().attempt

    def started():
        saga_step_started(order_id=inp.order_id, step=inp.step.value, attempt=attempt,
                          compensation=compensation, detail=started_detail)

    try:
        if own_database_only:
            with transaction.atomic():
                started()
                return StepResult(detail=body(attempt))
        started()
        return StepResult(detail=body(attempt))
    except CancelledError:
        raise
    except Exception as exc:
        infrastructure = _infrastructure_error(exc)
        if infrastructure is not None:
            # Our database or Redis, not the customer, the gateway or the mail: nothing is
            # recorded against the step (the database may well be what is down).
            activity.logger.warning("step %s of order %s: our infrastructure failed: %s",
                                    inp.step.value, inp.order_id, infrastructure)
            raise ApplicationError(
                f"Our own infrastructure was unavailable ({type(infrastructure).__name__}: {infrastructure})".strip(),
                type=InfrastructureUnavailable.__name__, category=ApplicationErrorCategory.BENIGN,
            ) from exc
        if own_database_only:
            started()  # it rolled back with the effect
        saga_step_failed(order_id=inp.order_id, step=inp.step.value, attempt=attempt,
                         error=f"{'Compensation failed: ' if compensation else ''}{exc}")
        if isinstance(exc, OrderError):
            # An outcome the saga expects (a decline, an outage): recorded above, so the
            # worker logs it quietly. Anything else is a bug and keeps its traceback.
            raise ApplicationError(
                str(exc), type=type(exc).__name__, non_retryable=type(exc).__name__ in NON_RETRYABLE_ERRORS,
                category=ApplicationErrorCategory.BENIGN,
            ) from exc
        raise


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
        order_id=inp.order_id, idempotency_key=inp.idempotency_key, attempt=attempt), heartbeat=_Heartbeat())


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
    beat = _Heartbeat()
    if resume_after:
        beat.details = (resume_after,)  # background beats keep the resume point until a new parcel is booked
    return _recorded(inp, lambda attempt: shipping.shipment_arrange(
        order_id=inp.order_id, idempotency_key=inp.idempotency_key, attempt=attempt,
        resume_after=resume_after, on_parcel_booked=beat.update), started_detail=started, heartbeat=beat)


@activity.defn(name="cancel_shipment")
def cancel_shipment(inp: StepInput) -> StepResult:
    return _recorded(inp, lambda attempt: shipping.shipment_cancel(order_id=inp.order_id, attempt=attempt),
                     compensation=True)


@activity.defn(name="notify_customer")
def notify_customer(inp: StepInput) -> StepResult:
    return _recorded(inp, lambda attempt: notifications.customer_notify(order_id=inp.order_id, attempt=attempt),
                     heartbeat=_Heartbeat())


# --- bookkeeping (local activities) -------------------------------------------------


@activity.defn(name="record_transition")
def record_transition(transition: SagaTransition) -> None:
    from ops.services import operator_action_outcome_record  # ops builds on orders

    close_old_connections()
    try:
        saga_transition_record(transition)
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
        notifications.followup_open(order_id=transition.order_id, reason=transition.detail)
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
