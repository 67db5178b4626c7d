"""The sandbox carrier reports what its parcels do, as a real carrier's webhooks would:
in transit, out for delivery, then delivered, over the signed HTTP webhook
(POST CARRIER_WEBHOOK_URL), spread over SANDBOX_CARRIER_DELIVERY_SECONDS after booking.

The order's fault plan can say otherwise ("delivery": "lost" reports in transit and then
nothing, so the tracker's deadline passes; "failed" ends with delivery_failed). Each event is
reported once (SandboxCarrierReport); one our webhook did not accept is tried again next run.
"""

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError
from django.db.models import Min
from django.utils import timezone

from orders.faults import fault_for
from orders.models import Order
from orders.services.carrier_events import SIGNATURE_HEADER, carrier_signature_header

from .models import SandboxCarrierReport, SandboxParcel

logger = logging.getLogger(__name__)

# (event, share of the delivery time after which it is reported)
_DELIVERED = (("in_transit", 1 / 3), ("out_for_delivery", 2 / 3), ("delivered", 1.0))
_SCHEDULES = {
    "": _DELIVERED,
    "lost": (("in_transit", 1 / 3),),
    "failed": (("in_transit", 1 / 3), ("out_for_delivery", 2 / 3), ("delivery_failed", 1.0)),
}
# Parcels older than this many delivery times are not looked at again.
_HORIZON = 20
MAX_SHIPMENTS_PER_RUN = 200

Post = Callable[[bytes, dict[str, str]], int]


def _http_post(body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(settings.CARRIER_WEBHOOK_URL, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def sandbox_carrier_report(*, post: Post | None = None, now=None) -> int:
    """Post every event that is due; returns how many our webhook accepted."""
    delay = settings.SANDBOX_CARRIER_DELIVERY_SECONDS
    if not delay:
        return 0
    post = post or _http_post
    now = now or timezone.now()
    shipments = (
        SandboxParcel.objects.filter(cancelled=False, created_at__gte=now - timedelta(seconds=delay * _HORIZON))
        .values("shipment_key").annotate(booked_at=Min("created_at")).order_by("booked_at")[:MAX_SHIPMENTS_PER_RUN]
    )
    accepted = 0
    for shipment in shipments:
        key, age = shipment["shipment_key"], (now - shipment["booked_at"]).total_seconds()
        done = set(SandboxCarrierReport.objects.filter(shipment_key=key).values_list("event", flat=True))
        plan = Order.objects.filter(workflow_id=key.removesuffix(":ship")).values_list("fault_plan", flat=True).first()
        schedule = _SCHEDULES.get(fault_for(plan or {}, "delivery").kind, _DELIVERED)
        for event, share in schedule:
            if event in done or age < delay * share:
                continue
            if not _report(post, key, event, now):
                break  # not accepted (our side has not recorded the booking yet?): next run
            accepted += 1
    return accepted


def _report(post: Post, key: str, event: str, now) -> bool:
    event_id = f"sbx-{key}-{event}"[:100]
    body = json.dumps({"event_id": event_id, "tracking_number": key, "event": event,
                       "occurred_at": now.isoformat()}).encode()
    try:
        status = post(body, {SIGNATURE_HEADER: carrier_signature_header(body=body)})
    except OSError as exc:
        logger.warning("sandbox carrier: could not reach the webhook for %s %s: %s", key, event, exc)
        return False
    if status != 200:
        logger.warning("sandbox carrier: webhook answered %s to %s %s", status, key, event)
        return False
    try:
        SandboxCarrierReport.objects.create(shipment_key=key, event=event, event_id=event_id, status_code=status)
    except IntegrityError:
        pass  # another run reported it at the same moment; the webhook deduplicated it
    return True
