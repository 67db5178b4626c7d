"""POST /webhooks/carrier/: signed like a payment provider's, stored once, on the timeline,
passed to the delivery tracker. Every refusal has its status and changes nothing."""

import asyncio
import json
import time

import pytest
from asgiref.sync import sync_to_async
from django.core import mail
from django.test import Client
from django.urls import reverse

from orders.models import CarrierEvent, NotificationAttempt, SagaEvent, Shipment
from orders.saga.shared import delivery_workflow_id
from orders.services.carrier_events import carrier_signature_header
from orders.signals import parcel_returned
from orders.status import OrderStatus

from .conftest import order_state, wait_for
from .factories import AMSTERDAM, make_order
from .saga_states import order_completed

URL = "/webhooks/carrier/"


def body_of(**fields) -> bytes:
    return json.dumps(fields).encode()


def event_body(tracking_number: str, event: str = "delivered", event_id: str = "evt_1", **extra) -> bytes:
    return body_of(event_id=event_id, tracking_number=tracking_number, event=event,
                   occurred_at="2026-12-03T08:00:00+00:00", **extra)


def post(body: bytes, *, signature: str | None = None, client: Client | None = None):
    """As the carrier posts: raw JSON, a signature header, no cookies, CSRF checks on."""
    client = client or Client(enforce_csrf_checks=True)
    headers = {} if signature is None else {"HTTP_X_CARRIER_SIGNATURE": signature}
    return client.post(URL, data=body, content_type="application/json", **headers)


def signed_post(body: bytes, **kwargs):
    return post(body, signature=carrier_signature_header(body=body, **kwargs))


def test_url_is_the_issue_s():
    assert reverse("carrier_webhook") == URL


@pytest.mark.django_db(transaction=True)
async def test_signed_delivered_makes_the_order_delivered_and_ends_its_tracker(saga_env):
    order = await sync_to_async(make_order)(shipping_address=AMSTERDAM)
    assert await saga_env.result(order) == "completed"
    tracker = saga_env.client.get_workflow_handle(delivery_workflow_id(order.workflow_id))
    tracking = await sync_to_async(lambda: Shipment.objects.get(order=order).tracking_number)()
    # The shipped email, with the tracking number, once.
    await wait_for(lambda: any("has shipped" in m.subject for m in mail.outbox), message="shipped email")

    for n, event in enumerate(["in_transit", "out_for_delivery"]):
        response = await sync_to_async(signed_post)(event_body(tracking, event, event_id=f"evt_{n}"))
        assert response.status_code == 200
    response = await sync_to_async(signed_post)(event_body(tracking, "delivered", event_id="evt_d"))
    assert response.status_code == 200 and response.json() == {"event_id": "evt_d", "duplicate": False}

    assert await asyncio.wait_for(tracker.result(), 30) == "delivered"
    state = await sync_to_async(order_state)(order.pk)
    assert state.status == OrderStatus.DELIVERED
    shipment = await sync_to_async(Shipment.objects.get)(order=order)
    assert shipment.state == Shipment.State.DELIVERED and shipment.tracking_ended_at is not None
    details = await sync_to_async(lambda: list(
        SagaEvent.objects.filter(order=order, step="ship", kind__in=["signal", "finished"])
        .values_list("kind", "detail")))()
    assert [k for k, _ in details] == ["signal", "signal", "signal", "finished"]
    assert "Carrier: out for delivery" in details[1][1]
    assert details[-1][1] == "Delivered (reported by carrier webhook)"

    # The same event again (the carrier retrying): 200, and nothing happens twice.
    response = await sync_to_async(signed_post)(event_body(tracking, "delivered", event_id="evt_d"))
    assert response.status_code == 200 and response.json()["duplicate"] is True
    await wait_for(lambda: NotificationAttempt.objects.filter(order=order, succeeded=True,
                                                              idempotency_key__endswith=":delivered").exists(),
                   message="delivered email")
    assert await sync_to_async(CarrierEvent.objects.filter(order=order).count)() == 3
    subjects = [m.subject for m in mail.outbox]
    assert sum("has shipped" in s for s in subjects) == 1
    assert sum("has been delivered" in s for s in subjects) == 1
    shipped = next(m for m in mail.outbox if "has shipped" in m.subject)
    assert tracking in shipped.body


@pytest.fixture
def shipped_order(db, temporal_server):
    """A completed order whose tracker is not running (no workers here): the webhook stores
    and shows the event; its signal to the tracker fails, which must not fail the request."""
    order = make_order(start_saga=False, shipping_address=AMSTERDAM)
    order_completed(order)
    return order


def _footprint(order) -> tuple:
    order = order_state(order.pk)
    return (CarrierEvent.objects.count(), SagaEvent.objects.filter(order=order).count(), order.status,
            Shipment.objects.get(order=order).state)


def test_bad_signatures_are_401_and_change_nothing(shipped_order, settings):
    tracking = shipped_order.shipment.tracking_number
    body = event_body(tracking)
    before = _footprint(shipped_order)
    now = int(time.time())
    cases = {
        "missing": None,
        "garbage": "nonsense",
        "no v1": f"t={now}",
        "no t": carrier_signature_header(body=body).split(",")[1],
        "wrong secret": carrier_signature_header(body=body, secret="not-the-carrier-s-secret"),
        "other body": carrier_signature_header(body=event_body(tracking, event_id="evt_other")),
        "stale": carrier_signature_header(body=body, timestamp=now - settings.CARRIER_WEBHOOK_TOLERANCE_SECONDS - 5),
        "future": carrier_signature_header(body=body, timestamp=now + settings.CARRIER_WEBHOOK_TOLERANCE_SECONDS + 5),
    }
    for name, signature in cases.items():
        response = post(body, signature=signature)
        assert response.status_code == 401, name
        assert "error" in response.json(), name
    assert _footprint(shipped_order) == before
    # Within the tolerance the timestamp is fine.
    ok = carrier_signature_header(body=body, timestamp=now - settings.CARRIER_WEBHOOK_TOLERANCE_SECONDS + 5)
    assert post(body, signature=ok).status_code == 200


def test_a_captured_request_replayed_later_is_refused(shipped_order, settings):
    body = event_body(shipped_order.shipment.tracking_number)
    captured = carrier_signature_header(body=body, timestamp=int(time.time()) - 3600)
    before = _footprint(shipped_order)
    assert post(body, signature=captured).status_code == 401
    assert _footprint(shipped_order) == before


@pytest.mark.parametrize(("body", "message"), [
    (b"not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (body_of(tracking_number="x", event="delivered", occurred_at="2026-12-03T08:00:00Z"), "event_id"),
    (body_of(event_id="e", event="delivered", occurred_at="2026-12-03T08:00:00Z"), "tracking_number"),
    (body_of(event_id="e", tracking_number="x", event="teleported", occurred_at="2026-12-03T08:00:00Z"),
     "event must be one of"),
    (body_of(event_id="e", tracking_number="x", event="delivered", occurred_at="yesterday"), "occurred_at"),
    (body_of(event_id="e", tracking_number="x", event="delivered", occurred_at="2026-12-03T08:00:00"), "occurred_at"),
    (body_of(event_id=7, tracking_number="x", event="delivered", occurred_at="2026-12-03T08:00:00Z"), "event_id"),
    (body_of(event_id="e" * 101, tracking_number="x", event="delivered", occurred_at="2026-12-03T08:00:00Z"),
     "event_id"),
])
def test_malformed_bodies_are_400_and_change_nothing(shipped_order, body, message):
    before = _footprint(shipped_order)
    response = signed_post(body)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert _footprint(shipped_order) == before


def test_unknown_parcel_is_404_and_changes_nothing(shipped_order):
    before = _footprint(shipped_order)
    response = signed_post(event_body("no-such-parcel"))
    assert response.status_code == 404 and "no-such-parcel" in response.json()["error"]
    assert _footprint(shipped_order) == before


def test_duplicate_is_200_with_no_second_effect_and_returned_is_announced(shipped_order,
                                                                         django_capture_on_commit_callbacks):
    heard = []

    def receiver(sender, order_id, source, **kwargs):
        heard.append((order_id, source))

    parcel_returned.connect(receiver)
    try:
        body = event_body(shipped_order.shipment.tracking_number, "returned", event_id="evt_r")
        with django_capture_on_commit_callbacks(execute=True):
            first = signed_post(body)
        after_first = _footprint(shipped_order)
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            again = signed_post(body)  # a retry within the tolerance, same event id
        assert callbacks == []  # no signal to the tracker, no announcement
    finally:
        parcel_returned.disconnect(receiver)
    assert (first.status_code, first.json()["duplicate"]) == (200, False)
    assert (again.status_code, again.json()["duplicate"]) == (200, True)
    assert _footprint(shipped_order) == after_first
    assert heard == [(shipped_order.pk, "carrier")]
    event = CarrierEvent.objects.get()
    assert (event.event, event.order_id) == ("returned", shipped_order.pk)


def test_only_post_and_no_csrf_needed_here_but_elsewhere(shipped_order, staff_user):
    assert Client().get(URL).status_code == 405
    # The staff action endpoint still wants its CSRF token: only the webhook is exempt.
    staff = Client(enforce_csrf_checks=True)
    staff.force_login(staff_user("operator"))
    response = staff.post(reverse("orders:action", args=[shipped_order.pk, "mark_delivered"]), {"reason": ""})
    assert response.status_code == 403 and b"CSRF" in response.content


@pytest.mark.django_db(transaction=True)
async def test_a_carrier_event_reaches_open_pages_live(temporal_server):
    """Through the saga-event broadcast path: the order's group (its pages) hears it after commit."""
    from channels.layers import get_channel_layer

    from orders.broadcast import order_group

    order = await sync_to_async(make_order)(start_saga=False, shipping_address=AMSTERDAM)
    await sync_to_async(order_completed)(order)
    tracking = await sync_to_async(lambda: Shipment.objects.get(order=order).tracking_number)()
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(order_group(order.pk), channel)
    try:
        response = await sync_to_async(signed_post)(event_body(tracking, "in_transit", event_id="evt_live"))
        assert response.status_code == 200
        message = await asyncio.wait_for(layer.receive(channel), 10)
        while message["event"]["kind"] != "signal":
            message = await asyncio.wait_for(layer.receive(channel), 10)
        assert message["type"] == "saga.event" and message["event"]["step"] == "ship"
        assert "Carrier: in transit" in message["event"]["detail"]
    finally:
        await layer.group_discard(order_group(order.pk), channel)
