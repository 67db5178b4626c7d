"""The carrier's webhook: what it told us about a parcel, checked, stored once, shown on
the order's timeline and passed to the delivery tracker.

Signed the way payment providers sign theirs (Stripe's scheme): the header
`X-Carrier-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + raw body>`, keyed with
CARRIER_WEBHOOK_SECRET, refused when t is more than CARRIER_WEBHOOK_TOLERANCE_SECONDS away
from now. The carrier (or anyone who captured a request) may send the same event again:
it is stored once by event_id and a duplicate has no second effect.
"""

import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils.dateparse import parse_datetime

from ..locks import lock_order
from ..models import CarrierEvent, SagaEvent, Shipment
from ..saga.shared import CarrierEventSignal, delivery_workflow_id
from ..signals import parcel_returned
from ..temporal_client import run_with_client
from .events import saga_event_record

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Carrier-Signature"
MAX_BODY_BYTES = 64 * 1024
EVENT_ID_MAX = CarrierEvent._meta.get_field("event_id").max_length
TRACKING_NUMBER_MAX = CarrierEvent._meta.get_field("tracking_number").max_length


class CarrierWebhookRejected(Exception):
    """The request is refused; `status` is the HTTP answer, the message says why."""

    status = 400


class SignatureInvalid(CarrierWebhookRejected):
    status = 401


class PayloadInvalid(CarrierWebhookRejected):
    status = 400


class ParcelUnknown(CarrierWebhookRejected):
    status = 404


@dataclass(frozen=True)
class CarrierWebhookResult:
    event: CarrierEvent
    duplicate: bool


def carrier_signature(*, secret: str, timestamp: int, body: bytes) -> str:
    """The v1 signature of a body sent at `timestamp` (unix seconds)."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def carrier_signature_header(*, body: bytes, secret: str | None = None, timestamp: int | None = None) -> str:
    """The X-Carrier-Signature value a carrier sends with `body` (the sandbox carrier signs with it)."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={carrier_signature(secret=secret or settings.CARRIER_WEBHOOK_SECRET, timestamp=t, body=body)}"


def carrier_signature_verify(*, header: str, body: bytes, now: float | None = None) -> None:
    """Raise SignatureInvalid unless `header` signs `body` with our secret, recently enough."""
    timestamp, signatures = None, []
    for part in (header or "").split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit() and len(value) <= 12:
            timestamp = int(value)
        elif name == "v1" and value:
            signatures.append(value)
    if timestamp is None or not signatures:
        raise SignatureInvalid(f"Missing or malformed {SIGNATURE_HEADER} header (expected t=<unix seconds>,v1=<hex>).")
    now = time.time() if now is None else now
    if abs(now - timestamp) > settings.CARRIER_WEBHOOK_TOLERANCE_SECONDS:
        raise SignatureInvalid("Signature timestamp outside the tolerance: the request is too old (or from the future).")
    expected = carrier_signature(secret=settings.CARRIER_WEBHOOK_SECRET, timestamp=timestamp, body=body)
    # Several v1 values are allowed while the carrier rolls its secret; each compared in constant time.
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures):
        raise SignatureInvalid("Signature does not match the body.")


@dataclass(frozen=True)
class CarrierEventPayload:
    event_id: str
    tracking_number: str
    event: str
    occurred_at: datetime


def carrier_payload_parse(body: bytes) -> CarrierEventPayload:
    """The webhook's JSON body, checked field by field; raises PayloadInvalid saying what is wrong."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise PayloadInvalid("The body is not JSON.") from None
    if not isinstance(data, dict):
        raise PayloadInvalid("The body must be a JSON object.")
    problems = []
    values = {}
    for name, limit in (("event_id", EVENT_ID_MAX), ("tracking_number", TRACKING_NUMBER_MAX)):
        value = data.get(name)
        if not isinstance(value, str) or not value.strip() or len(value) > limit or "\x00" in value:
            problems.append(f"{name} must be a non-empty string of at most {limit} characters")
        values[name] = value
    event = data.get("event")
    if event not in CarrierEvent.Event.values:
        problems.append(f"event must be one of {', '.join(CarrierEvent.Event.values)}")
    raw_time = data.get("occurred_at")
    occurred_at = parse_datetime(raw_time) if isinstance(raw_time, str) and len(raw_time) <= 40 else None
    if occurred_at is None or occurred_at.tzinfo is None:
        problems.append("occurred_at must be an ISO 8601 time with its UTC offset")
    if problems:
        raise PayloadInvalid("; ".join(problems) + ".")
    return CarrierEventPayload(event_id=values["event_id"], tracking_number=values["tracking_number"], event=event,
                               occurred_at=occurred_at)


def carrier_webhook_receive(*, body: bytes, signature: str) -> CarrierWebhookResult:
    """Check the signature, then the body, then the parcel; store the event once.

    Raises SignatureInvalid (401), PayloadInvalid (400) or ParcelUnknown (404): nothing is
    written then. The signature comes first, so an unsigned caller learns nothing of our parcels.
    """
    if len(body) > MAX_BODY_BYTES:
        raise PayloadInvalid(f"The body is over {MAX_BODY_BYTES} bytes.")
    carrier_signature_verify(header=signature, body=body)
    payload = carrier_payload_parse(body)
    return carrier_event_record(payload)


def carrier_event_record(payload: CarrierEventPayload) -> CarrierWebhookResult:
    """Store the event and its timeline entry in one transaction; after commit pass it to
    the tracker (and, for `returned`, tell whoever listens: orders.signals.parcel_returned).

    A duplicate (same event_id) is found and returned as it is: no event, no signal.
    Locks: the order row.
    """
    shipment = Shipment.objects.filter(carrier_reference=payload.tracking_number).only("order_id").first()
    if shipment is None:
        raise ParcelUnknown(f"No parcel with tracking number {payload.tracking_number!r}.")
    try:
        with transaction.atomic():
            order = lock_order(shipment.order_id)
            existing = CarrierEvent.objects.filter(event_id=payload.event_id).first()
            if existing is not None:
                return CarrierWebhookResult(event=existing, duplicate=True)
            event = CarrierEvent.objects.create(
                event_id=payload.event_id, order=order, tracking_number=payload.tracking_number,
                event=payload.event, occurred_at=payload.occurred_at,
            )
            label = CarrierEvent.Event(payload.event).label
            saga_event_record(
                order, kind=SagaEvent.Kind.SIGNAL, step="ship", key=f"carrier-event:{payload.event_id}",
                detail=f"Carrier: {label} at {payload.occurred_at.isoformat()} (event {payload.event_id})",
            )
            workflow_id = order.workflow_id
            transaction.on_commit(lambda: _tell_tracker(workflow_id, event))
            if payload.event == CarrierEvent.Event.RETURNED:
                order_id = order.pk
                transaction.on_commit(lambda: parcel_returned.send(sender=CarrierEvent, order_id=order_id,
                                                                   source="carrier"))
    except IntegrityError:
        # The same event stored by a concurrent request between our check and insert.
        return CarrierWebhookResult(event=CarrierEvent.objects.get(event_id=payload.event_id), duplicate=True)
    return CarrierWebhookResult(event=event, duplicate=False)


def _tell_tracker(saga_workflow_id: str, event: CarrierEvent) -> None:
    """Signal the tracker. If Temporal cannot be reached, the event is still ours: the
    tracker finds a stored delivered/returned event at its next check of the parcel."""
    signal = CarrierEventSignal(event_id=event.event_id, event=event.event, occurred_at=event.occurred_at.isoformat())

    async def send(client):
        await client.get_workflow_handle(delivery_workflow_id(saga_workflow_id)).signal("carrier_event", signal)

    try:
        # Short: the carrier waits on this request; what is stored is safe either way.
        run_with_client(send, timeout=5)
    except Exception as exc:
        logger.warning("carrier event %s not passed to the tracker of %s: %s", event.event_id, saga_workflow_id, exc)
