"""Fault plans: what the sandbox adapters should do wrong for one order.

A plan is a small dict stored on the order, e.g. {"payment": "decline"} or
{"payment": "transient:2", "latency_ms": 50}. It only takes effect when
settings.SANDBOX_FAULTS_ENABLED is on; SANDBOX_<SERVICE>_FAULT environment
variables apply a fault to every order (handy for demos against a running system).

Only the vocabulary lives here (parsing, presets, which fault applies), because the
domain reads Order.fault_plan: the inventory step injects its own fault. The adapters
that act on the other faults are the sandbox app's; nothing here imports it.
"""

import os
import re
from dataclasses import dataclass

from django.conf import settings

SERVICES = ("payment", "refund", "inventory", "shipping", "shipping_cancel", "notify", "delivery")

# What each service can be told to do. "transient:N" fails N calls per idempotency key
# then succeeds; "crash_after:N" (shipping) fails once after booking N parcels, to
# exercise heartbeats. "lost_response:N" acts (books the charge or refund, the parcel or
# the cancel) and then fails as unavailable, N calls per key: a real gateway whose answer
# is lost after the effect. "refund" and "shipping_cancel" are the compensations: "fail"
# refuses for good (RefundRefused, CancelRefused), "transient:N" times out N calls per key.
# An outage of a whole service ("fail until cleared") is not per order: it is the sandbox
# app's outage switch (sandbox.adapters.sandbox_outage_set).
_ALLOWED = {
    "payment": re.compile(r"^(decline|transient:\d+|lost_response:\d+)$"),
    # Compensations: a refund the gateway refuses (fail: until the plan changes) or times
    # out N times, and a shipment cancel the carrier refuses.
    "refund": re.compile(r"^(fail|transient:\d+)$"),
    "inventory": re.compile(r"^(fail)$"),
    "shipping": re.compile(r"^(fail|transient:\d+|crash_after:\d+|lost_response:\d+)$"),
    "shipping_cancel": re.compile(r"^(fail|transient:\d+)$"),
    "notify": re.compile(r"^(fail|transient:\d+)$"),
    # After booking, what the sandbox carrier's webhooks report: a parcel that is lost (in
    # transit, then nothing: the tracker's deadline passes) or that could not be delivered.
    "delivery": re.compile(r"^(lost|failed)$"),
}

# The presets the create-order form offers; names say what staff will see happen.
PRESETS = {
    "": ("No faults", {}),
    "decline": ("Payment declined", {"payment": "decline"}),
    "gateway_outage": ("Payment gateway outage (gets stuck, retry succeeds)", {"payment": "transient:3"}),
    "inventory_failure": ("Inventory confirmation fails", {"inventory": "fail"}),
    "shipping_failure": ("Carrier refuses shipment", {"shipping": "fail"}),
    "notify_failure": ("Customer notification fails (follow-up)", {"notify": "fail"}),
    "charge_lost": ("Gateway charges but its answer is lost (found by lookup)", {"payment": "lost_response:1"}),
    "charge_lost_then_failure": ("Gateway's answer lost, then inventory fails (the charge is refunded)",
                                 {"payment": "lost_response:5", "inventory": "fail"}),
    "refund_timeouts": ("Inventory fails, then the refund times out twice (refunded on retry)",
                        {"inventory": "fail", "refund": "transient:2"}),
    "refund_refused": ("Inventory fails, then the gateway refuses the refund (compensation stuck)",
                       {"inventory": "fail", "refund": "fail"}),
    "shipping_lost": ("Carrier books but its answer is lost (found by lookup)", {"shipping": "lost_response:1"}),
    "cancel_refused": ("Carrier refuses the shipment, then refuses to cancel it (compensation stuck)",
                       {"shipping": "fail", "shipping_cancel": "fail"}),
    "refund_stuck": ("Inventory fails, then the refund times out (compensation stuck, retry works)",
                     {"inventory": "fail", "refund": "transient:6"}),
    "parcel_lost": ("Carrier loses the parcel (delivery overdue: follow-up)", {"delivery": "lost"}),
    "delivery_failed": ("Carrier cannot deliver the parcel (follow-up)", {"delivery": "failed"}),
    # Returns (issue 8): the order completes; its returns' refunds meet the fault.
    "return_refund_down": ("Completes; a return's refund finds the gateway down (stuck, retry works)",
                           {"refund": "transient:3"}),
    "return_refund_refused": ("Completes; a return's refund is refused (stuck: give it up)", {"refund": "fail"}),
}


class FaultPlanInvalid(ValueError):
    pass


@dataclass(frozen=True)
class Fault:
    kind: str  # decline, transient, crash_after, lost_response, fail, or "" for none
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
