"""Bulk operator actions: retry or compensate many stuck sagas as one Celery task.

Every order still goes through ops.services.operator_action_request, so each gets its own
permission check, audit row and signal (carrying that row's id, which is what makes the
saga act once). A Temporal batch signal would send one payload to all: no per-order id.

Execution is resumable: items move pending -> sending -> done/failed, and a run that dies
between sending and recording is recovered from the audit log, so a retried task neither
skips an order nor signals one twice.
"""

import logging
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from orders.log_context import order_scope
from orders.models import OperatorAction, Order
from orders.selectors.preview import BulkRollbackOutcome, bulk_rollback_outcome
from orders.status import SagaStatus, Step

from .jobs import BULK_OPERATION_RUN, job_enqueue_on_commit
from .models import BulkOperation, BulkOperationItem
from .permissions import OPERATE_SAGAS
from .services import ActionNotAllowed, operator_action_request

logger = logging.getLogger(__name__)

Item = BulkOperationItem.State
BULK_ACTIONS = {OperatorAction.Action.RETRY.value, OperatorAction.Action.COMPENSATE.value}
BATCH = 100


class BulkInputInvalid(Exception):
    """The selection cannot become a bulk operation; the message says why, for staff."""


# Order ids are bigint primary keys: a larger number is no order, and would overflow the query.
ORDER_ID_MAX = 2**63 - 1


def _order_ids_parse(raw_ids) -> list[int]:
    ids: list[int] = []
    for raw in raw_ids:
        text = str(raw).strip()
        if not text:
            continue
        # ASCII digits only: "²" passes isdigit() but is no number for int().
        if not (text.isascii() and text.isdigit()) or int(text) > ORDER_ID_MAX:
            raise BulkInputInvalid(f"{text[:40]!r} is not an order id.")
        value = int(text)
        if value not in ids:
            ids.append(value)
    return ids


def bulk_operation_create(
    *, action: str, actor, reason: str = "", order_ids=None, step: str | None = None
) -> BulkOperation:
    """Check the selection, save the operation with one item per order, queue its execution
    (ops.tasks.bulk_operation_run, once the rows are committed).

    Either `order_ids` (a list) or `step` (every order stuck at that step). Orders that
    are not stuck are kept: they fail one by one with the reason, like any other refusal.
    Raises BulkInputInvalid or PermissionDenied; nothing is saved then.
    """
    step = (step or "").strip()
    ids = bulk_selection(action=action, actor=actor, order_ids=order_ids, step=step)
    with transaction.atomic():
        operation = BulkOperation.objects.create(
            action=action, requested_by=actor, reason=(reason or "").strip()[:2000], step=step, total=len(ids),
        )
        BulkOperationItem.objects.bulk_create(
            [BulkOperationItem(operation=operation, order_id=i) for i in ids], batch_size=500
        )
        job_enqueue_on_commit(BULK_OPERATION_RUN, operation.pk)
    return operation


def bulk_selection(*, action: str, actor, order_ids=None, step: str | None = None) -> list[int]:
    """The order ids a bulk action would act on (bulk_operation_create's checks, nothing
    saved): what its confirmation previews. Raises BulkInputInvalid or PermissionDenied."""
    if action not in BULK_ACTIONS:
        raise BulkInputInvalid("Choose an action: retry or compensate.")
    if actor is None or not actor.has_perm(OPERATE_SAGAS):
        raise PermissionDenied("You are not allowed to retry or compensate sagas.")
    step = (step or "").strip()
    ids = _order_ids_parse(order_ids or [])
    limit = settings.BULK_MAX_ORDERS
    if step and ids:
        raise BulkInputInvalid("Choose either orders or a step, not both.")
    if step:
        if step not in Step.values:
            raise BulkInputInvalid(f"Unknown step {step!r}.")
        ids = list(
            Order.objects.filter(saga_status=SagaStatus.STUCK, current_step=step)
            .order_by("pk").values_list("pk", flat=True)[: limit + 1]
        )
        if not ids:
            raise BulkInputInvalid(f"No orders are stuck at {Step(step).label}.")
    elif not ids:
        raise BulkInputInvalid("Select at least one order.")
    if len(ids) > limit:
        raise BulkInputInvalid(f"At most {limit} orders at once: narrow the selection.")
    existing = set(Order.objects.filter(pk__in=ids).values_list("pk", flat=True))
    missing = [i for i in ids if i not in existing]
    if missing:
        shown = ", ".join(f"#{i}" for i in missing[:10])
        raise BulkInputInvalid(f"No such order: {shown}{' and more' if len(missing) > 10 else ''}.")
    return ids


def _item_finish(operation: BulkOperation, item_id: int, *, state: str, detail: str, action_id: int | None) -> None:
    """Record an item's outcome and count it, once (only a 'sending' item can finish)."""
    with transaction.atomic():
        finished = BulkOperationItem.objects.filter(pk=item_id, state=Item.SENDING).update(
            state=state, detail=detail[:2000], operator_action_id=action_id, updated_at=timezone.now()
        )
        if finished:
            counter = "done" if state == Item.DONE else "failed"
            BulkOperation.objects.filter(pk=operation.pk).update(**{counter: F(counter) + 1})


def _finish_from_audit(operation: BulkOperation, item_id: int, audit: OperatorAction) -> None:
    if audit.outcome == OperatorAction.Outcome.FAILED:
        _item_finish(operation, item_id, state=Item.FAILED, detail=audit.outcome_detail or "signal failed",
                     action_id=audit.pk)
    else:
        _item_finish(operation, item_id, state=Item.DONE, detail=f"{audit.action}: {audit.get_outcome_display()}",
                     action_id=audit.pk)


def _item_recover(operation: BulkOperation, item: BulkOperationItem) -> None:
    """An item left 'sending' by a run that died: did its audit row get written?"""
    audit = (
        OperatorAction.objects.filter(
            order_id=item.order_id, action=operation.action, actor=operation.requested_by,
            created_at__gte=item.claimed_at,
        ).order_by("id").first()
    )
    if audit is not None:
        _finish_from_audit(operation, item.pk, audit)
    else:
        BulkOperationItem.objects.filter(pk=item.pk, state=Item.SENDING).update(state=Item.PENDING, claimed_at=None)


def _item_send(operation: BulkOperation, item_id: int, order_id: int, reason: str) -> None:
    claimed = BulkOperationItem.objects.filter(pk=item_id, state=Item.PENDING).update(
        state=Item.SENDING, claimed_at=timezone.now()
    )
    if not claimed:
        return
    try:
        audit = operator_action_request(
            order_id=order_id, action=operation.action, actor=operation.requested_by, reason=reason
        )
    except (ActionNotAllowed, PermissionDenied) as exc:
        _item_finish(operation, item_id, state=Item.FAILED, detail=str(exc), action_id=None)
        return
    except Order.DoesNotExist:
        _item_finish(operation, item_id, state=Item.FAILED, detail="The order no longer exists.", action_id=None)
        return
    _finish_from_audit(operation, item_id, audit)


def bulk_operation_execute(*, operation_id: int, heartbeat=None) -> BulkOperation:
    """Send the action to every order of the operation not yet done; safe to call again.

    The caller makes sure one execution runs at a time (the task holds a lock);
    `heartbeat()` is called between orders so it can keep that lock. An unexpected error
    (the database going away) propagates with the current item left 'sending', and the
    next execution recovers it. Must not run inside a transaction (operator_action_request).
    """
    operation = BulkOperation.objects.select_related("requested_by").get(pk=operation_id)
    if operation.state == BulkOperation.State.FINISHED:
        return operation
    BulkOperation.objects.filter(pk=operation.pk, state=BulkOperation.State.QUEUED).update(
        state=BulkOperation.State.RUNNING, started_at=timezone.now()
    )
    for item in operation.items.filter(state=Item.SENDING):
        _item_recover(operation, item)
    reason = f"Bulk {operation.action} #{operation.pk}" + (f": {operation.reason}" if operation.reason else "")
    while True:
        batch = list(operation.items.filter(state=Item.PENDING).order_by("id").values_list("pk", "order_id")[:BATCH])
        if not batch:
            break
        for item_id, order_id in batch:
            if heartbeat:
                heartbeat()
            # Each order's lines carry its id, and only its own (the next order rebinds).
            with order_scope(order_id):
                _item_send(operation, item_id, order_id, reason)
    # The counters were bumped one by one; settle them from the items, which are the truth.
    counts = operation.items.aggregate(
        done=Count("pk", filter=Q(state=Item.DONE)), failed=Count("pk", filter=Q(state=Item.FAILED)),
    )
    BulkOperation.objects.filter(pk=operation.pk).update(
        state=BulkOperation.State.FINISHED, finished_at=timezone.now(), **counts
    )
    operation.refresh_from_db()
    return operation


# --- selectors -----------------------------------------------------------------------------


@dataclass
class BulkProgress:
    operation: BulkOperation
    failed_items: list[BulkOperationItem]
    finished: bool
    percent: int
    failed_order_ids: list[int]
    # A bulk compensate: what the sagas it signalled have undone so far (None for a retry).
    rollback_done: BulkRollbackOutcome | None = None


def bulk_operation_progress(*, operation_id: int, failed_limit: int = 200) -> BulkProgress:
    """The operation and its failed items (with their orders): two queries; a compensate's
    rollbacks so far: three more."""
    operation = BulkOperation.objects.select_related("requested_by").get(pk=operation_id)
    failed = list(
        operation.items.filter(state=Item.FAILED).select_related("order").order_by("id")[:failed_limit]
    )
    processed = operation.done + operation.failed
    percent = int(100 * processed / operation.total) if operation.total else 100
    rollback_done = None
    if operation.action == OperatorAction.Action.COMPENSATE:
        rollback_done = bulk_rollback_outcome(operation.items.filter(state=Item.DONE).values("order_id"))
    return BulkProgress(
        operation=operation,
        failed_items=failed,
        finished=operation.state == BulkOperation.State.FINISHED,
        percent=percent,
        failed_order_ids=[i.order_id for i in failed],
        rollback_done=rollback_done,
    )


def bulk_operations_recent(*, limit: int = 30) -> list[BulkOperation]:
    return list(BulkOperation.objects.select_related("requested_by").order_by("-created_at", "-id")[:limit])
