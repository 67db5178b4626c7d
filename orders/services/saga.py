"""Starting sagas and recording what they do: the writes behind the saga's activities."""

import hashlib
import hmac
import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy
from temporalio.service import RPCError

from .. import metrics
from ..locks import lock_order
from ..log_context import get_logger, order_bind
from ..models import OperatorAction, Order, SagaEvent
from ..saga import search_attributes as sa
from ..saga.shared import RetrySettings, SagaInput, SagaTransition, StepName
from ..status import ORDER_STATUS_AFTER_SAGA, STUCK_SAGA_STATUSES, TERMINAL_SAGA_STATUSES, SagaStatus
from ..temporal_client import run_with_client
from .commands import operator_action_outcome_record
from .events import order_saga_state_set, saga_event_record
from .transactions import step_atomic

logger = get_logger(__name__)

SAGA_WORKFLOW = "OrderSaga"
# What a start raises when Temporal cannot be reached (connect fails with a RuntimeError).
TEMPORAL_UNREACHABLE = (RPCError, TimeoutError, OSError, RuntimeError)


def customer_search_id(email: str) -> str:
    """The customer as Temporal's visibility knows them: a keyed hash of the email, never the
    email itself (search attributes are shown to whoever sees the Temporal UI and cannot be
    erased there). The same customer always gets the same id, so their sagas can be listed."""
    digest = hmac.new(settings.SECRET_KEY.encode(), email.strip().lower().encode(), hashlib.sha256)
    return f"c_{digest.hexdigest()[:24]}"


def saga_input_for(order: Order) -> SagaInput:
    return SagaInput(
        order_id=order.pk,
        payments_task_queue=settings.PAYMENTS_TASK_QUEUE,
        retry=RetrySettings(
            initial_interval_seconds=settings.SAGA_RETRY_INITIAL_SECONDS,
            stuck_auto_compensate_seconds=settings.SAGA_STUCK_AUTO_COMPENSATE_SECONDS,
        ),
        delivery_check_interval_seconds=settings.DELIVERY_CHECK_INTERVAL_SECONDS,
        delivery_checks_per_run=settings.DELIVERY_CHECKS_PER_RUN,
        delivery_deadline_seconds=settings.DELIVERY_DEADLINE_DAYS * 86400,
        delivery_give_up_seconds=settings.DELIVERY_GIVE_UP_DAYS * 86400,
    )


def saga_start(*, order_id: int) -> bool:
    """Start the order's workflow. Safe to call again: an existing run is kept.

    If Temporal cannot be reached the order stays 'pending' with the reason recorded,
    and starting it again later (the stalled-saga sweeper does) picks it up.
    """
    order = Order.objects.get(pk=order_id)
    order_bind(order)
    attributes = TypedSearchAttributes(
        [
            SearchAttributePair(sa.ORDER_ID, order.pk),
            SearchAttributePair(sa.CUSTOMER_ID, customer_search_id(order.customer_email)),
            SearchAttributePair(sa.ORDER_AMOUNT, float(order.total)),
            SearchAttributePair(sa.SAGA_STATUS, SagaStatus.RUNNING.value),
            SearchAttributePair(sa.CURRENT_STEP, StepName.VALIDATE.value),
        ]
    )

    async def start(client):
        await client.start_workflow(
            SAGA_WORKFLOW,
            saga_input_for(order),
            id=order.workflow_id,
            task_queue=settings.SAGA_TASK_QUEUE,
            search_attributes=attributes,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )

    try:
        run_with_client(start, timeout=15)
        logger.info("saga_started", workflow_id=order.workflow_id)
        return True
    except Exception as exc:
        # Temporal down or slow is expected (the sweeper starts the saga later): a warning
        # without traceback. Anything else is a bug: an error with its traceback.
        logger.log(logging.WARNING if isinstance(exc, TEMPORAL_UNREACHABLE) else logging.ERROR, "saga_start_failed",
                   workflow_id=order.workflow_id, error=str(exc) or type(exc).__name__, error_type=type(exc).__name__,
                   exc_info=not isinstance(exc, TEMPORAL_UNREACHABLE))
        with transaction.atomic():
            order = lock_order(order_id)
            message = f"Could not start the saga (will be retried): {exc}"
            saga_event_record(order, kind=SagaEvent.Kind.FAILED, detail=message, last_error=message)
        return False


def step_event_key(step_key: str, attempt: int, kind: str) -> str:
    """The key of a step attempt's own event: a re-run of the same attempt (a local
    activity re-executed after a crash) writes it once."""
    return f"{step_key}:a{attempt}:{kind}"


def saga_step_started(*, order_id: int, step: str, step_key: str, attempt: int, compensation: bool,
                      detail: str = "") -> None:
    """Mark a step (or its compensation) as under way: the page shows it running.
    `step_key` names this run of the step (its idempotency key and activity id).
    Locks: the order row.
    (No savepoint when nested: see orders.services.transactions.step_atomic.)"""
    with step_atomic():
        order = lock_order(order_id)
        order_bind(order)
        if compensation:
            saga_event_record(order, kind=SagaEvent.Kind.COMPENSATING, step=step, detail=detail, attempt=attempt,
                              key=step_event_key(step_key, attempt, SagaEvent.Kind.COMPENSATING))
            return
        kind = SagaEvent.Kind.RETRYING if attempt > 1 else SagaEvent.Kind.STARTED
        saga_event_record(
            order, kind=kind, step=step, detail=detail, attempt=attempt, current_step=step,
            saga_status=SagaStatus.RUNNING if order.saga_status == SagaStatus.PENDING else None,
            key=step_event_key(step_key, attempt, kind),
        )


def saga_step_failed(*, order_id: int, step: str, step_key: str, attempt: int, error: str) -> None:
    """Record a failed attempt; its business effect was rolled back with its transaction.
    Locks: the order row."""
    with transaction.atomic():
        order = lock_order(order_id)
        saga_event_record(order, kind=SagaEvent.Kind.FAILED, step=step, detail=error, attempt=attempt, last_error=error,
                          key=step_event_key(step_key, attempt, SagaEvent.Kind.FAILED))


def saga_transition_record(transition: SagaTransition, *, fallback_key: str = "") -> bool:
    """A workflow-level change (stuck, compensating, finished, a signal) in the read model.

    Once per key (the transition's, or `fallback_key` for workflows from before keys):
    a replayed bookkeeping activity changes nothing. Returns False when it was already
    recorded. A transition that answers an operator command (`action_id`) also records the
    command's outcome, and its event points to the command: one transaction for both.
    Locks: the order row.
    """
    key = transition.key or fallback_key
    with transaction.atomic():
        order = lock_order(transition.order_id)
        order_bind(order)
        if key and SagaEvent.objects.filter(idempotency_key=key).exists():
            return False
        action_id = None
        if transition.action_id is not None and operator_action_outcome_record(
            action_id=transition.action_id, order_id=order.pk, outcome=transition.action_outcome,
            detail=transition.detail,
        ):
            action_id = transition.action_id
        stuck = transition.kind == SagaEvent.Kind.STUCK
        state = {
            "status": ORDER_STATUS_AFTER_SAGA.get(transition.saga_status),
            "saga_status": transition.saga_status or None,
            "current_step": transition.step if stuck else None,
            "last_error": transition.detail if stuck else None,
        }
        if transition.kind:
            saga_event_record(order, kind=transition.kind, step=transition.step, detail=transition.detail, key=key,
                              operator_action_id=action_id, **state)
        else:
            # No row to key: setting the same saga status again is harmless by itself.
            order_saga_state_set(order, **state)
        action = None
        if action_id is not None:
            action = OperatorAction.objects.filter(pk=action_id).values_list("action", flat=True).first()
    _transition_measure(transition, order, action)
    return True


def _transition_measure(transition: SagaTransition, order: Order, action: str | None) -> None:
    """Count a recorded transition (after its commit, once per key)."""
    status = transition.saga_status or ""
    if status in TERMINAL_SAGA_STATUSES:
        metrics.saga_finished(outcome=status, seconds=(timezone.now() - order.created_at).total_seconds())
    elif status in STUCK_SAGA_STATUSES:  # (a follow-up is counted where it opens: notifications.py)
        metrics.saga_stuck(step=transition.step or "", saga_status=status)
    if action is not None and transition.action_outcome:
        metrics.operator_answer(action=action, outcome=transition.action_outcome)
