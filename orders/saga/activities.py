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
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

from django.db import InterfaceError, OperationalError, close_old_connections, transaction
from redis.exceptions import RedisError
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory, CancelledError

from ordersite.logging_config import mark_logged

from .. import metrics
from ..circuit_breaker import breaker_for
from ..crashpoints import crash_point
from ..errors import NON_RETRYABLE_ERRORS, InfrastructureUnavailable, OrderError, ServiceCircuitOpen
from ..log_context import get_logger
from ..services import delivery, inventory, notifications, ordering, payments, shipping
from ..services.outages import saga_step_waiting
from ..services.saga import saga_step_failed, saga_step_started, saga_transition_record
from .shared import (
    DeliveryCheck,
    DeliveryEnd,
    DeliveryFollowUp,
    DeliveryNotice,
    DeliveryStatus,
    OutcomeNotice,
    SagaTransition,
    StepInput,
    StepResult,
)

# Lines carry the activity's workflow, run, attempt and order (orders/saga/log_context.py).
logger = get_logger(__name__)

# The activities each worker runs, by the name Temporal knows them under. The worker is
# built from these, and a test replaces one by that name (build_workers(activity_overrides=)).
ORDERS_QUEUE_ACTIVITIES: dict[str, Callable] = {}
PAYMENTS_QUEUE_ACTIVITIES: dict[str, Callable] = {}


def _activity(name: str, *, queue: dict[str, Callable]) -> Callable[[Callable], Callable]:
    """@activity.defn(name=name), and listed under that name for the queue's worker."""

    def register(fn: Callable) -> Callable:
        if name in ORDERS_QUEUE_ACTIVITIES or name in PAYMENTS_QUEUE_ACTIVITIES:
            raise ValueError(f"two activities named {name!r}")
        queue[name] = activity.defn(name=name)(fn)
        return fn

    return register


INFRASTRUCTURE_ERRORS = (OperationalError, InterfaceError, RedisError)


def _infrastructure_error(exc: BaseException) -> BaseException | None:
    """The database or Redis error behind `exc` (itself or a cause), if there is one."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, INFRASTRUCTURE_ERRORS):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _infrastructure_unavailable(infrastructure: BaseException) -> ApplicationError:
    """What the saga reads as a lost attempt (attempts.lost_attempt), not a failed one."""
    return ApplicationError(
        f"Our own infrastructure was unavailable ({type(infrastructure).__name__}: {infrastructure})".strip(),
        type=InfrastructureUnavailable.__name__, category=ApplicationErrorCategory.BENIGN,
    )


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
    info = activity.info()
    attempt = inp.attempt_offset + info.attempt
    # The activity id tells a second run of the step (an operator's retry) from a re-run
    # of the same attempt after a crash, which must write nothing new.
    round_key = f"{inp.idempotency_key}:{info.activity_id}"
    if info.is_local and not compensation:
        # Not for a local step: its id is its place among the workflow's commands, and a
        # workflow task lost after the step ran (its worker killed) is run again from the
        # history, where it may take another path first (a rerun after our database
        # refused it), so the same first attempt came back under another id and recorded
        # a second 'started'. Its attempt number already tells the runs apart: each new
        # run of a step counts on from the last (StepInput.attempt_offset).
        round_key = f"{inp.idempotency_key}:local"

    def started():
        saga_step_started(order_id=inp.order_id, step=inp.step.value, step_key=round_key, attempt=attempt,
                          compensation=compensation, detail=started_detail)

    began = time.perf_counter()

    def measured(outcome: str) -> None:
        metrics.step_attempt_observe(step=inp.step.value, compensation=compensation, outcome=outcome,
                                     seconds=time.perf_counter() - began)

    try:
        if own_database_only:
            with transaction.atomic():
                started()
                result = StepResult(detail=body(attempt))
        else:
            started()
            result = StepResult(detail=_waiting_out_open_circuits(inp, body, attempt=attempt,
                                                                  compensation=compensation))
        measured("succeeded")
        return result
    except CancelledError:
        measured("cancelled")
        raise
    except Exception as exc:
        if isinstance(exc, ApplicationError) and exc.type == ServiceCircuitOpen.__name__:
            measured("circuit_open")
            raise  # recorded as 'waiting' (_waiting_out_open_circuits), not as a failed attempt
        infrastructure = _infrastructure_error(exc)
        if infrastructure is not None:
            measured("infrastructure")
            # Our database or Redis, not the customer, the gateway or the mail: nothing is
            # recorded against the step (the database may well be what is down).
            logger.warning("step_infrastructure_unavailable", step=inp.step.value, error=str(infrastructure),
                           error_type=type(infrastructure).__name__)
            raise _infrastructure_unavailable(infrastructure) from exc
        measured("failed")
        if own_database_only:
            started()  # it rolled back with the effect
        saga_step_failed(order_id=inp.order_id, step=inp.step.value, step_key=round_key, attempt=attempt,
                         error=f"{'Compensation failed: ' if compensation else ''}{exc}")
        if isinstance(exc, OrderError):
            # An outcome the saga expects (a decline, an outage): recorded above, so the
            # worker logs it quietly (one info line with its order). Anything else is a bug
            # and keeps its traceback, logged once (here; see logging_config.LoggedOnce).
            logger.info("step_failed", step=inp.step.value, compensation=compensation, error=str(exc),
                        error_type=type(exc).__name__)
            raise ApplicationError(
                str(exc), type=type(exc).__name__, non_retryable=type(exc).__name__ in NON_RETRYABLE_ERRORS,
                category=ApplicationErrorCategory.BENIGN,
            ) from exc
        logger.exception("step_crashed", step=inp.step.value, compensation=compensation)
        mark_logged(exc)
        raise


def _waiting_out_open_circuits(inp: StepInput, body: Callable[[int], str], *, attempt: int,
                               compensation: bool) -> str:
    """Run the step's service; while the gateway's or carrier's circuit is open, wait.

    The step records "waiting: ... (circuit open), next probe in N s" (not a failed
    attempt). If the probe is due before this attempt's start-to-close runs out, the
    attempt sleeps until then and calls again (it may be the probe); otherwise it ends with
    a ServiceCircuitOpen ApplicationError whose next_retry_delay is the cool-off left.
    """
    while True:
        try:
            return body(attempt)
        except ServiceCircuitOpen as exc:
            saga_step_waiting(order_id=inp.order_id, step=inp.step.value, attempt=attempt,
                              detail=exc.waiting_detail, compensation=compensation)
            breaker_for(exc.service).waiting_note(inp.order_id)
            if not _sleep_within_attempt(exc.retry_after):
                raise ApplicationError(
                    exc.waiting_detail, exc.retry_after, type=ServiceCircuitOpen.__name__,
                    next_retry_delay=timedelta(seconds=max(exc.retry_after, 0.2)),
                    category=ApplicationErrorCategory.BENIGN,
                ) from exc


# Time left at the end of an attempt after its wait: for the probe call itself.
_PROBE_ALLOWANCE = timedelta(seconds=3)


def _sleep_within_attempt(seconds: float) -> bool:
    """Sleep `seconds` (a little more, so the probe is due) if the attempt has the time, and
    say whether it slept. Not for steps with a heartbeat timeout shorter than the wait: a
    bare heartbeat here would overwrite the details they heartbeat (shipping's last parcel)."""
    info = activity.info()
    wait = timedelta(seconds=seconds + 0.05)
    deadline = info.current_attempt_scheduled_time + (info.start_to_close_timeout or timedelta(0)) - _PROBE_ALLOWANCE
    if datetime.now(UTC) + wait > deadline:
        return False
    if info.heartbeat_timeout and wait >= info.heartbeat_timeout / 2:
        return False
    activity.wait_for_cancelled_sync(wait.total_seconds())
    return not activity.is_cancelled()


@_activity("validate_order", queue=ORDERS_QUEUE_ACTIVITIES)
def validate_order(inp: StepInput) -> StepResult:
    return _recorded(inp, lambda attempt: ordering.order_validate(order_id=inp.order_id, attempt=attempt),
                     own_database_only=True)


@_activity("reserve_inventory", queue=ORDERS_QUEUE_ACTIVITIES)
def reserve_inventory(inp: StepInput) -> StepResult:
    return _recorded(inp, lambda attempt: inventory.inventory_reserve(
        order_id=inp.order_id, idempotency_key=inp.idempotency_key, attempt=attempt), own_database_only=True)


@_activity("release_reservation", queue=ORDERS_QUEUE_ACTIVITIES)
def release_reservation(inp: StepInput) -> StepResult:
    return _recorded(inp, lambda attempt: inventory.reservation_release(
        order_id=inp.order_id, idempotency_key=inp.idempotency_key, attempt=attempt), compensation=True,
        own_database_only=True)


@_activity("charge_payment", queue=PAYMENTS_QUEUE_ACTIVITIES)
def charge_payment(inp: StepInput) -> StepResult:
    return _recorded(inp, lambda attempt: payments.payment_charge(
        order_id=inp.order_id, idempotency_key=inp.idempotency_key, attempt=attempt), heartbeat=_Heartbeat())


@_activity("refund_payment", queue=PAYMENTS_QUEUE_ACTIVITIES)
def refund_payment(inp: StepInput) -> StepResult:
    charge_key = inp.idempotency_key.removesuffix(":compensate")
    return _recorded(inp, lambda attempt: payments.payment_refund(
        order_id=inp.order_id, charge_key=charge_key, idempotency_key=inp.idempotency_key, attempt=attempt),
        compensation=True)


@_activity("confirm_inventory", queue=ORDERS_QUEUE_ACTIVITIES)
def confirm_inventory(inp: StepInput) -> StepResult:
    return _recorded(inp, lambda attempt: inventory.inventory_confirm(
        order_id=inp.order_id, idempotency_key=inp.idempotency_key, attempt=attempt), own_database_only=True)


@_activity("restock_inventory", queue=ORDERS_QUEUE_ACTIVITIES)
def restock_inventory(inp: StepInput) -> StepResult:
    return _recorded(inp, lambda attempt: inventory.inventory_restock(
        order_id=inp.order_id, idempotency_key=inp.idempotency_key, attempt=attempt), compensation=True,
        own_database_only=True)


@_activity("arrange_shipping", queue=ORDERS_QUEUE_ACTIVITIES)
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


@_activity("cancel_shipment", queue=ORDERS_QUEUE_ACTIVITIES)
def cancel_shipment(inp: StepInput) -> StepResult:
    return _recorded(inp, lambda attempt: shipping.shipment_cancel(order_id=inp.order_id, attempt=attempt),
                     compensation=True)


@_activity("notify_customer", queue=ORDERS_QUEUE_ACTIVITIES)
def notify_customer(inp: StepInput) -> StepResult:
    return _recorded(inp, lambda attempt: notifications.customer_notify(
        order_id=inp.order_id, idempotency_key=inp.idempotency_key, attempt=attempt), heartbeat=_Heartbeat())


@_activity("notify_outcome", queue=ORDERS_QUEUE_ACTIVITIES)
def notify_outcome(notice: OutcomeNotice) -> str:
    """The customer hears that their order failed or was cancelled (orders.saga.order_saga,
    behind PATCH_OUTCOME_TOLD). A failed attempt is in the notification ledger."""
    return _email_sent(lambda: notifications.customer_outcome_notify(
        order_id=notice.order_id, outcome=notice.outcome, idempotency_key=notice.idempotency_key,
        attempt=activity.info().attempt))


def _email_sent(send: Callable[[], str]) -> str:
    """Run one email outside a step (an outcome, shipped or delivered email). The mailer's
    refusal is an ApplicationError; our own outage is reported as such, so the workflow runs
    the email again instead of counting it as the mailer's failure."""
    close_old_connections()
    try:
        return send()
    except OrderError as exc:
        raise ApplicationError(str(exc), type=type(exc).__name__, category=ApplicationErrorCategory.BENIGN) from exc
    except Exception as exc:
        infrastructure = _infrastructure_error(exc)
        if infrastructure is None:
            raise
        logger.warning("email_infrastructure_unavailable", error=str(infrastructure),
                       error_type=type(infrastructure).__name__)
        raise _infrastructure_unavailable(infrastructure) from exc
    finally:
        close_old_connections()


# --- bookkeeping (local activities) -------------------------------------------------


def _fallback_key() -> str:
    """A key for transitions from workflows started before the saga sent one: a local
    activity's id is its sequence number in the run, the same when a replay re-runs it."""
    info = activity.info()
    return f"{info.workflow_id}:{info.workflow_run_id}:la{info.activity_id}"


@_activity("record_transition", queue=ORDERS_QUEUE_ACTIVITIES)
def record_transition(transition: SagaTransition) -> None:
    """The event, the order's saga state and, for an operator command, its outcome."""
    close_old_connections()
    try:
        saga_transition_record(transition, fallback_key=_fallback_key())
        crash_point("bookkeeping.after_commit", order=transition.order_id, kind=transition.kind)
    finally:
        close_old_connections()


@_activity("open_followup", queue=ORDERS_QUEUE_ACTIVITIES)
def open_followup(transition: SagaTransition) -> None:
    close_old_connections()
    try:
        notifications.followup_open(order_id=transition.order_id, reason=transition.detail,
                                    key=transition.key or _fallback_key())
    finally:
        close_old_connections()


@_activity("open_outcome_followup", queue=ORDERS_QUEUE_ACTIVITIES)
def open_outcome_followup(transition: SagaTransition) -> None:
    """An undone order's customer could not be told how it ended: staff are (the saga goes on)."""
    close_old_connections()
    try:
        notifications.outcome_followup_open(order_id=transition.order_id, reason=transition.detail,
                                            key=transition.key or _fallback_key())
    finally:
        close_old_connections()


@_activity("close_followup", queue=ORDERS_QUEUE_ACTIVITIES)
def close_followup(transition: SagaTransition) -> None:
    close_old_connections()
    try:
        notifications.followup_close(order_id=transition.order_id, resolution=transition.detail)
    finally:
        close_old_connections()


# --- delivery tracking ------------------------------------------------------------------


@_activity("check_delivery", queue=ORDERS_QUEUE_ACTIVITIES)
def check_delivery(check: DeliveryCheck) -> DeliveryStatus:
    close_old_connections()
    try:
        delivered, returned = delivery.delivery_state(order_id=check.order_id)
        return DeliveryStatus(delivered=delivered, returned=returned)
    finally:
        close_old_connections()


@_activity("mark_delivered", queue=ORDERS_QUEUE_ACTIVITIES)
def mark_delivered(check: DeliveryCheck) -> None:
    close_old_connections()
    try:
        shipping.shipment_mark_delivered(order_id=check.order_id, source=check.source)
    finally:
        close_old_connections()



@_activity("delivery_end", queue=ORDERS_QUEUE_ACTIVITIES)
def delivery_end(end: DeliveryEnd) -> None:
    close_old_connections()
    try:
        delivery.delivery_tracking_end(order_id=end.order_id, outcome=end.outcome, source=end.source, key=end.key,
                                       action_id=end.action_id)
    finally:
        close_old_connections()


@_activity("delivery_followup_open", queue=ORDERS_QUEUE_ACTIVITIES)
def delivery_followup_open(followup: DeliveryFollowUp) -> None:
    close_old_connections()
    try:
        delivery.delivery_followup_open(order_id=followup.order_id, kind=followup.kind, reason=followup.reason,
                                        key=followup.key)
    finally:
        close_old_connections()


@_activity("notify_delivery", queue=ORDERS_QUEUE_ACTIVITIES)
def notify_delivery(notice: DeliveryNotice) -> str:
    """The shipped or delivered email; a refusal is an ApplicationError the tracker retries (bounded)."""
    return _email_sent(lambda: delivery.customer_delivery_notify(order_id=notice.order_id, outcome=notice.outcome,
                                                                 attempt=activity.info().attempt))
