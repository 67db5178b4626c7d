"""Waiting for the fault suite's sagas to come to rest: each order's outcome in our
database and its workflow's state in Temporal."""

from __future__ import annotations

import time

from django.apps import apps
from django.db import connection

from .plans import PlacedOrder

AT_REST = {"completed", "failed", "rejected", "cancelled", "stuck", "followup", "compensation_stuck"}
TERMINAL = {"completed", "failed", "rejected", "cancelled"}


def outcome_of(status: str, saga_status: str) -> str:
    if saga_status == "completed" and status in ("completed", "delivered"):
        return "completed"
    if saga_status == "compensated" and status == "failed":
        return "failed"
    if saga_status in ("rejected", "cancelled") and status == saga_status:
        return saga_status
    if saga_status == "stuck":
        return "stuck"
    if saga_status == "needs_followup":
        return "followup"
    if saga_status == "compensation_stuck":
        return "compensation_stuck"
    return f"{saga_status}/{status}"  # in flight, or inconsistent


def order_outcomes(order_ids) -> dict[int, str]:
    order_table = apps.get_model("orders", "Order")._meta.db_table
    with connection.cursor() as cur:
        cur.execute(f"SELECT id, status, saga_status FROM {order_table}")
        rows = cur.fetchall()
    wanted = set(order_ids)
    return {pk: outcome_of(status, saga) for pk, status, saga in rows if pk in wanted}


def workflow_states(order_ids) -> dict[int, tuple[str, int]]:
    """Each order's saga in Temporal: (status name, attempts of a pending workflow task)."""
    from orders.models import Order
    from orders.temporal_client import run_with_client

    ids = dict(Order.objects.filter(pk__in=list(order_ids)).values_list("pk", "workflow_id"))

    async def describe_all(client):
        out = {}
        for pk, wid in ids.items():
            try:
                desc = await client.get_workflow_handle(wid).describe()
                pending = desc.raw_description.pending_workflow_task
                out[pk] = (desc.status.name if desc.status else "?", pending.attempt if pending else 0)
            except Exception as exc:  # not found, server restarting
                out[pk] = (f"error:{type(exc).__name__}", 0)
        return out

    return run_with_client(describe_all, timeout=120)


def settle(placed: list[PlacedOrder], *, timeout: float, quiet: float = 3, log=print) -> dict[int, str]:
    """Wait until every order is at rest in our database and its workflow agrees (closed
    when terminal, running when it waits for staff), then `quiet` seconds more."""
    ids = [p.order_id for p in placed]
    deadline = time.monotonic() + timeout
    last_report = 0.0
    while True:
        connection.close()  # a fresh connection each round: the database may have been away
        try:
            outcomes = order_outcomes(ids)
        except Exception as exc:
            log(f"settle: database not answering ({exc}); waiting")
            time.sleep(1)
            continue
        moving = [pk for pk, o in outcomes.items() if o not in AT_REST]
        if not moving:
            states = workflow_states(ids)
            moving = [pk for pk, o in outcomes.items()
                      if (o in TERMINAL) == (states[pk][0] == "RUNNING")]
        if not moving:
            time.sleep(quiet)
            return order_outcomes(ids)
        if time.monotonic() > deadline:
            log(f"settle: {len(moving)} order(s) not at rest after {timeout:.0f}s: {sorted(moving)[:20]}")
            return order_outcomes(ids)
        if time.monotonic() - last_report > 15:
            last_report = time.monotonic()
            log(f"settle: {len(moving)} order(s) still moving")
        time.sleep(1)
