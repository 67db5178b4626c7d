"""The saga's read model: events and the order's saga fields, written with their effect.

Call these inside the transaction that makes the business change, so the event exists
if and only if the change does. Broadcasts go out after commit.
"""

import logging

from django.db import transaction
from django.utils import timezone

from ..broadcast import OPS_GROUP, order_group, publish_on_commit
from ..log_context import get_logger
from ..models import Order, SagaEvent
from ..status import STUCK_SAGA_STATUSES, TERMINAL_SAGA_STATUSES, check_transition, status_is_behind

logger = get_logger(__name__)


def _order_snapshot(order: Order) -> dict:
    return {
        "order_id": order.pk,
        "number": order.number,
        "status": order.status,
        "saga_status": order.saga_status,
        "current_step": order.current_step,
        "last_error": order.last_error,
        # With the fields above, all of the order a live page's summary shows that a saga
        # event can change (ops/order_pages/consumers.py builds a frame from the message).
        "stuck_since": order.stuck_since.isoformat() if order.stuck_since else None,
    }


def saga_event_record(
    order: Order, *, kind: str, step: str = "", detail: str = "", attempt: int = 1, key: str | None = None,
    operator_action_id: int | None = None, **state: str | None,
) -> SagaEvent:
    """Append an event to the order's log and broadcast it (with the order's state) after commit.

    `state` (status, saga_status, current_step, last_error) changes the order in the same
    UPDATE that stamps last_event_at: one write for the order per event.
    `operator_action_id`: the operator command this event answers (a signal, an ignored one).
    The message names the order's previous event (`previous_event_id`, from Order.last_event_id).
    `key` makes the write happen once: an event with that key already there (a replayed
    local activity, a re-run attempt) is returned as it is, with no state change and no
    broadcast. The unique column backs this up.
    The caller holds the order's row lock (orders.locks.lock_order) and loaded `order` under it.
    """
    if key:
        existing = SagaEvent.objects.filter(idempotency_key=key).first()
        if existing is not None:
            return existing
    changed = _apply_state(order, **state)
    event = SagaEvent.objects.create(
        order=order, step=step, kind=kind, detail=detail[:2000], attempt=attempt, idempotency_key=key or None,
        operator_action_id=operator_action_id,
    )
    # The caller loaded the order under its row lock, so last_event_id is the event before
    # this one: the broadcast names it, and a page holding the timeline up to it adds this
    # event without reading (ops/order_pages/consumers.py).
    previous_event_id = order.last_event_id
    order.last_event_at = event.created_at
    order.last_event_id = event.pk
    order.save(update_fields=[*changed, "last_event_at", "last_event_id", "updated_at"])
    publish_on_commit(
        [order_group(order.pk), OPS_GROUP],
        {
            "type": "saga.event",
            "event": {
                "id": event.pk,
                "step": event.step,
                "kind": event.kind,
                "detail": event.detail,
                "attempt": event.attempt,
                "created_at": event.created_at.isoformat(),
            },
            "previous_event_id": previous_event_id,
            "order": _order_snapshot(order),
        },
    )
    _log_on_commit(order, event)
    return event


def _log_on_commit(order: Order, event: SagaEvent) -> None:
    # One line per event of the saga, once it is committed: the order's story in the logs.
    # A stuck saga waits for staff: a warning. The order is named explicitly (not bound), as
    # a caller may record events for many orders in one task.
    level = logging.WARNING if event.kind == SagaEvent.Kind.STUCK else logging.INFO
    fields = {"order_id": order.pk, "order_number": order.number, "kind": event.kind, "step": event.step or None,
              "attempt": event.attempt, "saga_status": order.saga_status, "detail": event.detail[:300] or None}
    transaction.on_commit(lambda: logger.log(level, "saga_event", **fields))


def order_saga_state_set(order: Order, **state: str | None) -> None:
    """Change the order's status/saga fields without an event (see _apply_state).

    The caller holds the order's row lock (orders.locks.lock_order).
    """
    changed = _apply_state(order, **state)
    if changed:
        order.save(update_fields=[*changed, "updated_at"])


def _apply_state(
    order: Order,
    *,
    status: str | None = None,
    saga_status: str | None = None,
    current_step: str | None = None,
    last_error: str | None = None,
) -> list[str]:
    """Set what changed on the instance (status checked against the allowed transitions);
    returns the changed field names for the caller's save."""
    fields = []
    # A status the order has already gone past (completed, re-applied after the tracker
    # marked it delivered) is a replay of a step taken, not a move back: nothing to do.
    if status is not None and status != order.status and not status_is_behind(status, order.status):
        check_transition(order.status, status)
        order.status = status
        fields.append("status")
    if saga_status is not None and saga_status != order.saga_status and order.saga_status not in TERMINAL_SAGA_STATUSES:
        # (A finished saga never comes back to life: a late or replayed write is dropped.)
        order.saga_status = saga_status
        order.stuck_since = timezone.now() if saga_status in STUCK_SAGA_STATUSES else None
        fields += ["saga_status", "stuck_since"]
    if current_step is not None and current_step != order.current_step:
        order.current_step = current_step
        fields.append("current_step")
    if last_error is not None and last_error != order.last_error:
        order.last_error = last_error[:2000]
        fields.append("last_error")
    return fields
