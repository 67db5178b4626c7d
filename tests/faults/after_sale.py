"""The fault suite's after-sale paths (issue 8): what staff and customers do to orders that
completed, while worker processes are SIGKILLed at random.

- parcel lost: staff report the parcel lost with remedy "refund"; the delivery tracker
  ends and the refund saga gives the whole charge back.
- return never arrives: a return is opened with a short parcel deadline that no parcel
  ever answers; it must end expired, nothing refunded, nothing restocked.
- refund gateway down: a return whose parcel comes back and whose refund finds the gateway
  down (the "return_refund_down" preset on the order's plan) until it is stuck; an operator
  retries it, as from the order page, until it is refunded.

The orders are placed with the other waves (plans.AFTER_SALE_MIX), so they live through the
same crash points and restarts; these steps start once every saga is at rest.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection

from .plans import LOST_PARCEL, NEVER_ARRIVES, REFUND_GATEWAY_DOWN

# What each path's return must end as (Return.State values).
EXPECTED_RETURN_STATE = {LOST_PARCEL: "refunded", NEVER_ARRIVES: "expired", REFUND_GATEWAY_DOWN: "refunded"}


@dataclass
class AfterSale:
    """What the after-sale phase did, for the checks and the figures."""

    started: dict[int, str] = field(default_factory=dict)  # order id -> path
    refused: dict[int, str] = field(default_factory=dict)  # order id -> why staff could not act
    retries: dict[int, int] = field(default_factory=dict)  # return id -> operator retries sent
    trackers: dict[int, str] = field(default_factory=dict)  # order id -> tracker workflow status
    return_workflows: dict[int, str] = field(default_factory=dict)  # return id -> workflow status
    unsettled: list[int] = field(default_factory=list)  # return ids not terminal in time
    elapsed: float = 0.0


def _staff():
    from ops.roles import OPERATOR, staff_user_create

    return staff_user_create(username=f"faults-op-{uuid.uuid4().hex[:6]}", password=uuid.uuid4().hex,
                             role=OPERATOR)


def _whole_order(order_id: int):
    from orders.models import OrderLine
    from orders.services.returns import ReturnLineRequest

    return [ReturnLineRequest(order_line_id=pk, quantity=qty)
            for pk, qty in OrderLine.objects.filter(order_id=order_id).values_list("pk", "quantity")]


def _start(path: str, order_id: int, staff) -> None:
    from ops.services import delivery_report_lost
    from orders.services.returns import return_open, return_parcel_receive

    if path == LOST_PARCEL:
        delivery_report_lost(order_id=order_id, actor=staff, remedy="refund", reason="fault suite: lost in depot")
    elif path == NEVER_ARRIVES:
        return_open(order_id=order_id, lines=_whole_order(order_id), reason="fault suite: never sent back",
                    actor=staff)
    else:
        return_open(order_id=order_id, lines=_whole_order(order_id), reason="fault suite: refund meets an outage",
                    actor=staff)
        return_parcel_receive(order_id=order_id, actor=staff, reason="fault suite: parcel in hand")


def _workflow_statuses(workflow_ids: dict) -> dict:
    from orders.temporal_client import run_with_client

    async def describe_all(client):
        out = {}
        for key, wid in workflow_ids.items():
            try:
                out[key] = (await client.get_workflow_handle(wid).describe()).status.name
            except Exception as exc:  # not found, or the server restarting
                out[key] = f"error:{type(exc).__name__}"
        return out

    return run_with_client(describe_all, timeout=120)


def run_after_sale(run, pool, *, parcel_deadline_seconds: float, timeout: float,
                   chaos_interval: tuple[float, float] | None, seed: int, log=print) -> AfterSale:
    """Act on the completed after-sale orders, with random SIGKILLs of the workers, and
    wait until every return they opened is terminal (retrying stuck refunds as an operator)."""
    from orders.models import Order, Return
    from orders.saga.shared import delivery_workflow_id
    from orders.services.returns import ReturnNotAllowed, return_command_send
    from ops.services import ActionNotAllowed

    result = AfterSale()
    started = time.monotonic()
    staff = _staff()
    # Read where the return's saga is started (return_input_for, in this process).
    saved_deadline = settings.RETURN_PARCEL_DEADLINE_SECONDS
    settings.RETURN_PARCEL_DEADLINE_SECONDS = parcel_deadline_seconds
    if chaos_interval:
        pool.start_chaos(interval=chaos_interval, seed=seed)
    try:
        rng = random.Random(seed)
        todo = [p for p in run.placed if p.kind.after_sale and run.outcomes.get(p.order_id) == "completed"]
        rng.shuffle(todo)
        for placed in todo:
            try:
                _start(placed.kind.after_sale, placed.order_id, staff)
            except (ReturnNotAllowed, ActionNotAllowed) as exc:
                result.refused[placed.order_id] = str(exc)
                continue
            result.started[placed.order_id] = placed.kind.after_sale
            time.sleep(rng.random())  # spread them, so the kills land at different steps
        log(f"fault suite: after-sale started for {len(result.started)} orders "
            f"({', '.join(sorted(set(result.started.values())))})")

        # Wait for every return to end; stuck refunds are retried by the operator. A lost
        # parcel's refund appears when its tracker ends, so those orders must have one first.
        deadline = time.monotonic() + timeout
        lost_orders = {pk for pk, path in result.started.items() if path == LOST_PARCEL}
        while True:
            connection.close()  # a fresh connection each round
            returns = list(Return.objects.filter(order_id__in=list(result.started))
                           .values_list("pk", "order_id", "state"))
            with_return = {order_id for _, order_id, _ in returns}
            open_ = [(pk, state) for pk, _, state in returns if state not in Return.TERMINAL_STATES]
            for pk, state in open_:
                if state == Return.State.STUCK and result.retries.get(pk, 0) < 5:
                    try:
                        return_command_send(return_id=pk, action="return_retry", actor=staff,
                                            reason="fault suite: the gateway is back")
                    except ReturnNotAllowed:
                        continue  # moved on since we looked
                    result.retries[pk] = result.retries.get(pk, 0) + 1
            if not open_ and lost_orders <= with_return:
                break
            if time.monotonic() > deadline:
                result.unsettled = sorted(pk for pk, _ in open_)
                missing = sorted(lost_orders - with_return)
                log(f"fault suite: after-sale not at rest after {timeout:.0f}s: open returns {result.unsettled}, "
                    f"lost parcels without a refund {missing}")
                break
            time.sleep(1)
    finally:
        settings.RETURN_PARCEL_DEADLINE_SECONDS = saved_deadline
        if chaos_interval:
            pool.stop_chaos()
    time.sleep(2)  # a workflow writes its end a moment before it returns
    wids = dict(Order.objects.filter(pk__in=list(result.started)).values_list("pk", "workflow_id"))
    result.trackers = _workflow_statuses({pk: delivery_workflow_id(wids[pk]) for pk in lost_orders})
    result.return_workflows = _workflow_statuses(dict(
        Return.objects.filter(order_id__in=list(result.started)).values_list("pk", "workflow_id")))
    connection.close()
    result.elapsed = time.monotonic() - started
    return result
