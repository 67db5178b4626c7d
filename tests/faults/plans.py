"""The fault suite's fault plans (what each lets an order's saga end as) and placing
orders with them through the app's own service."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

# --- the plans ------------------------------------------------------------------------

# What an order's fault plan lets its saga end as, when it is at rest:
# completed | failed | rejected | cancelled | stuck | followup | compensation_stuck
@dataclass(frozen=True)
class PlanKind:
    name: str
    plan: dict
    expect: frozenset
    healthy: bool = False  # nothing wrong outside: it must complete, whatever we kill
    lines: int = 1
    after_sale: str = ""  # once completed, what happens to it (tests/faults/after_sale.py)


def _kind(name, plan, expect, healthy=False, lines=1, after_sale=""):
    return PlanKind(name, plan, frozenset(expect), healthy, lines, after_sale)


PLAN_MIX = [
    _kind("none", {}, {"completed"}, healthy=True),
    _kind("none_2_lines", {}, {"completed"}, healthy=True, lines=2),
    _kind("gateway_blip", {"payment": "transient:1"}, {"completed"}, healthy=True),
    _kind("carrier_blip", {"shipping": "transient:1"}, {"completed"}, healthy=True),
    _kind("carrier_reset", {"shipping": "crash_after:1"}, {"completed"}, healthy=True, lines=2),
    _kind("notify_blip", {"notify": "transient:1"}, {"completed"}, healthy=True),
    _kind("decline", {"payment": "decline"}, {"failed"}),
    # transient:3 exhausts the charge's 3 attempts: stuck, waiting for an operator.
    _kind("gateway_outage", {"payment": "transient:3"}, {"stuck", "completed"}),
    _kind("inventory_failure", {"inventory": "fail"}, {"failed"}),
    _kind("shipping_failure", {"shipping": "fail"}, {"failed"}, lines=2),
    _kind("notify_failure", {"notify": "fail"}, {"followup"}),
    # Issue 7's boundary faults (H7); skipped with a note where this tree lacks them.
    _kind("lost_charge", {"payment": "lost_response:1"}, {"completed"}, healthy=True),
    _kind("lost_charge_then_fail", {"payment": "lost_response:1", "inventory": "fail"}, {"failed"}),
    _kind("lost_refund", {"inventory": "fail", "refund": "lost_response:1"}, {"failed"}),
    _kind("refund_timeouts", {"inventory": "fail", "refund": "transient:2"}, {"failed"}),
    # Compensations that cannot complete wait for staff, visibly (issue 7, case 7).
    _kind("refund_refused", {"inventory": "fail", "refund": "fail"}, {"compensation_stuck"}),
    _kind("cancel_refused", {"shipping": "fail", "shipping_cancel": "fail"}, {"compensation_stuck"}, lines=2),
    _kind("lost_booking", {"shipping": "lost_response:1"}, {"completed"}, healthy=True),
]


# Issue 8's paths after the sale. These orders must complete first (nothing is wrong before
# the sale); tests/faults/after_sale.py then acts on them while workers are killed.
LOST_PARCEL, NEVER_ARRIVES, REFUND_GATEWAY_DOWN = "parcel_lost", "return_never_arrives", "refund_gateway_down"
AFTER_SALE_MIX = [
    _kind("after:parcel_lost", {}, {"completed"}, healthy=True, after_sale=LOST_PARCEL),
    _kind("after:return_never_arrives", {}, {"completed"}, healthy=True, lines=2, after_sale=NEVER_ARRIVES),
    # The "return_refund_down" preset: the refund fails 3 calls per key, so it gets stuck.
    _kind("after:refund_gateway_down", {"refund": "transient:3"}, {"completed"}, healthy=True, lines=2,
          after_sale=REFUND_GATEWAY_DOWN),
]


def usable_plans(log=print, mix=None) -> list[PlanKind]:
    """The plans this tree's fault vocabulary knows; unknown ones are skipped, with a note."""
    from orders.faults import FaultPlanInvalid, fault_plan_clean

    usable = []
    for kind in PLAN_MIX if mix is None else mix:
        try:
            fault_plan_clean(kind.plan)
        except FaultPlanInvalid as exc:
            log(f"fault suite: skipping plan {kind.name!r} {kind.plan}: {exc}")
            continue
        usable.append(kind)
    return usable


# --- orders ---------------------------------------------------------------------------


@dataclass
class PlacedOrder:
    order_id: int
    kind: PlanKind


def place_orders(count: int, plans: list[PlanKind], products: list, *, rng: random.Random, tag: str,
                 first_index: int = 0, pace: float = 0) -> list[PlacedOrder]:
    """`count` orders through the app's own service, plans round-robin from a shuffled mix."""
    from orders.services.ordering import LineRequest, order_create

    placed = []
    for i in range(first_index, first_index + count):
        kind = plans[i % len(plans)]
        chosen = rng.sample(products, kind.lines)
        order = order_create(
            customer_name=f"Fault {i}", customer_email=f"c{i}.{tag}@faults.example",
            lines=[LineRequest(product_id=p.pk, quantity=rng.randint(1, 3)) for p in chosen],
            fault_plan=kind.plan, start_saga=True,
        )
        placed.append(PlacedOrder(order.pk, kind))
        if pace:
            time.sleep(pace)  # spread the sagas out, so kills land at every step
    return placed
