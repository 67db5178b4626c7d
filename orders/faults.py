"""Fault plans: what the sandbox adapters should do wrong for one order.

A plan is a small dict stored on the order, e.g. {"payment": "decline"} or
{"payment": "transient:2", "latency_ms": 50}. It only takes effect when
settings.SANDBOX_FAULTS_ENABLED is on; SANDBOX_<SERVICE>_FAULT environment
variables apply a fault to every order (handy for demos against a running system).
"""

import os
import re
from dataclasses import dataclass

from django.conf import settings

from .models import Order

SERVICES = ("payment", "refund", "inventory", "shipping", "shipping_cancel", "notify")

# What each service can be told to do. "transient:N" fails N calls per idempotency key
# then succeeds; "crash_after:N" (shipping) fails once after booking N parcels, to
# exercise heartbeats. An outage of a whole service ("fail until cleared") is not per
# order: it is a SandboxOutage row, see orders.adapters.sandbox.sandbox_outage_set.
_ALLOWED = {
    "payment": re.compile(r"^(decline|transient:\d+)$"),
    # Compensations: a refund the gateway refuses (fail: until the plan changes) or times
    # out N times, and a shipment cancel the carrier refuses.
    "refund": re.compile(r"^(fail|transient:\d+)$"),
    "inventory": re.compile(r"^(fail)$"),
    "shipping": re.compile(r"^(fail|transient:\d+|crash_after:\d+)$"),
    "shipping_cancel": re.compile(r"^(fail|transient:\d+)$"),
    "notify": re.compile(r"^(fail|transient:\d+)$"),
}

# The presets the create-order form offers; names say what staff will see happen.
PRESETS = {
    "": ("No faults", {}),
    "decline": ("Payment declined", {"payment": "decline"}),
    "gateway_outage": ("Payment gateway outage (gets stuck, retry succeeds)", {"payment": "transient:3"}),
    "inventory_failure": ("Inventory confirmation fails", {"inventory": "fail"}),
    "shipping_failure": ("Carrier refuses shipment", {"shipping": "fail"}),
    "notify_failure": ("Customer notification fails (follow-up)", {"notify": "fail"}),
    "refund_stuck": ("Inventory fails, then the refund times out (compensation stuck, retry works)",
                     {"inventory": "fail", "refund": "transient:6"}),
}


class FaultPlanInvalid(ValueError):
    pass


@dataclass(frozen=True)
class Fault:
    kind: str  # decline, outage, transient, crash_after, fail, or "" for none
    count: int = 0


NO_FAULT = Fault("")


def fault_plan_clean(plan: dict | None) -> dict:
    """Validate a plan from a form, the admin or a test; raises FaultPlanInvalid."""
    plan = dict(plan or {})
    cleaned: dict = {}
    for key, value in plan.items():
        if key == "latency_ms":
            if not isinstance(value, int) or not 0 <= value <= 60_000:
                raise FaultPlanInvalid("latency_ms must be a whole number of milliseconds up to 60000")
            cleaned[key] = value
            continue
        if key not in _ALLOWED:
            raise FaultPlanInvalid(f"unknown service {key!r} in fault plan; expected one of {', '.join(SERVICES)}")
        if not isinstance(value, str) or not _ALLOWED[key].match(value):
            raise FaultPlanInvalid(f"{value!r} is not a fault the {key} sandbox knows")
        cleaned[key] = value
    return cleaned


def order_fault_plan(order_id: int) -> dict:
    return Order.objects.values_list("fault_plan", flat=True).get(pk=order_id) or {}


def fault_for(plan: dict, service: str) -> Fault:
    """The fault that applies to one call, from the order's plan or the environment."""
    if not settings.SANDBOX_FAULTS_ENABLED:
        return NO_FAULT
    spec = (plan or {}).get(service) or os.environ.get(f"SANDBOX_{service.upper()}_FAULT", "")
    if not spec:
        return NO_FAULT
    kind, _, count = spec.partition(":")
    return Fault(kind, int(count or 0))


def latency_ms(plan: dict) -> int:
    if not settings.SANDBOX_FAULTS_ENABLED:
        return 0
    return int((plan or {}).get("latency_ms") or os.environ.get("SANDBOX_LATENCY_MS") or 0)
