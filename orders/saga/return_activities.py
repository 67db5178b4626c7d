"""The return saga's activities: each loads by id and calls one service in
orders.services.return_steps, between 'started' and 'failed' events on the order's timeline.

Registered in the same per-queue dicts as the order saga's (the refund on the payments
queue, where the gateway's concurrency is bounded), so the workers pick them up.
"""

import contextlib
from collections.abc import Callable

from django.db import close_old_connections
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from ..errors import NON_RETRYABLE_ERRORS, OrderError, ServiceCircuitOpen
from ..services import return_steps as returns
from .activities import (
    ORDERS_QUEUE_ACTIVITIES,
    PAYMENTS_QUEUE_ACTIVITIES,
    _activity,
    _infrastructure_error,
    _infrastructure_unavailable,
)
from .shared import ReturnStepInput, ReturnTransition


def _recorded(inp: ReturnStepInput, body: Callable[[int], str], *, record_start: bool = True) -> str:
    """Run a step's service between its events; our own outages are not the step's failure."""
    close_old_connections()
    info = activity.info()
    attempt = inp.attempt_offset + info.attempt
    step_key = f"{info.workflow_id}:{inp.step}:{info.activity_id}"
    try:
        if record_start:
            returns.return_step_started(return_id=inp.return_id, step=inp.step, step_key=step_key, attempt=attempt)
        return body(attempt)
    except Exception as exc:
        if isinstance(exc, ServiceCircuitOpen):
            raise ApplicationError(str(exc), exc.retry_after, type=ServiceCircuitOpen.__name__,
                                   category=ApplicationErrorCategory.BENIGN) from exc
        infrastructure = _infrastructure_error(exc)
        if infrastructure is not None:
            raise _infrastructure_unavailable(infrastructure) from exc
        with contextlib.suppress(Exception):  # the failure matters more than its event
            returns.return_step_failed(return_id=inp.return_id, step=inp.step, step_key=step_key, attempt=attempt,
                                       error=str(exc))
        if isinstance(exc, OrderError):
            raise ApplicationError(str(exc), type=type(exc).__name__,
                                   non_retryable=type(exc).__name__ in NON_RETRYABLE_ERRORS,
                                   category=ApplicationErrorCategory.BENIGN) from exc
        raise
    finally:
        close_old_connections()


@_activity("return_restock", queue=ORDERS_QUEUE_ACTIVITIES)
def return_restock(inp: ReturnStepInput) -> str:
    # Our own database only, in one transaction: no separate 'started' event.
    return _recorded(inp, lambda attempt: returns.return_restock(return_id=inp.return_id, attempt=attempt),
                     record_start=False)


@_activity("return_refund", queue=PAYMENTS_QUEUE_ACTIVITIES)
def return_refund(inp: ReturnStepInput) -> str:
    return _recorded(inp, lambda attempt: returns.return_refund(return_id=inp.return_id, attempt=attempt))


@_activity("return_notify", queue=ORDERS_QUEUE_ACTIVITIES)
def return_notify(inp: ReturnStepInput) -> str:
    return _recorded(inp, lambda attempt: returns.return_notify(return_id=inp.return_id, attempt=attempt))


# --- bookkeeping (local activities) -------------------------------------------------


@_activity("record_return_transition", queue=ORDERS_QUEUE_ACTIVITIES)
def record_return_transition(transition: ReturnTransition) -> None:
    close_old_connections()
    try:
        returns.return_transition_record(transition)
    finally:
        close_old_connections()


@_activity("close_return_unrefunded", queue=ORDERS_QUEUE_ACTIVITIES)
def close_return_unrefunded(transition: ReturnTransition) -> None:
    close_old_connections()
    try:
        returns.return_close_unrefunded(return_id=transition.return_id, state=transition.return_state,
                                        detail=transition.detail, key=transition.key)
    finally:
        close_old_connections()
