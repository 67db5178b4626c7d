"""The customer's order page: public, reached by the token link, in plain customer language."""

from decimal import Decimal

import pytest
from django.urls import reverse

from orders.models import Order, Payment, SagaEvent

from .factories import make_order

pytestmark = pytest.mark.django_db


def order_after(events: list[tuple[str, str]], **state) -> Order:
    """An order with the (step, kind) events a saga would have recorded, in the given state."""
    order = make_order(start_saga=False)
    SagaEvent.objects.bulk_create(SagaEvent(order=order, step=step, kind=kind, detail=f"staff-only {step} {kind}")
                                  for step, kind in events)
    if state:
        Order.objects.filter(pk=order.pk).update(**state)
    return order


def page(client, order) -> str:
    response = client.get(reverse("customer:status", args=[order.public_token]))
    assert response.status_code == 200
    return response.content.decode().replace("&#x27;", "'")


HAPPY = [("validate", "succeeded"), ("reserve", "succeeded"), ("charge", "succeeded"), ("confirm", "succeeded"),
         ("ship", "succeeded"), ("notify", "succeeded")]

CASES = [
    ([], {}, "We've received your order", "We're checking it"),
    (HAPPY[:3], {"status": "processing", "saga_status": "running"}, "Payment taken", "packing"),
    (HAPPY[:5], {"status": "processing", "saga_status": "running"}, "Packed and handed to the carrier", "on its way"),
    (HAPPY, {"status": "delivered", "saga_status": "completed"}, "Delivered", "has arrived"),
    (HAPPY[:2] + [("charge", "failed"), ("reserve", "compensated")],
     {"status": "failed", "saga_status": "compensated"}, "We couldn't complete your order",
     "You have not been charged."),
    (HAPPY[:4] + [("ship", "failed"), ("confirm", "compensated"), ("charge", "compensated"),
                  ("reserve", "compensated")],
     {"status": "failed", "saga_status": "compensated"}, "We couldn't complete your order",
     "We've refunded your payment in full."),
    ([("validate", "failed")], {"status": "rejected", "saga_status": "rejected"}, "We couldn't accept your order",
     "You have not been charged."),
    ([("validate", "succeeded"), ("reserve", "compensated")], {"status": "cancelled", "saga_status": "cancelled"},
     "Your order was cancelled", "You have not been charged."),
]


@pytest.mark.parametrize(("events", "state", "headline", "message"), CASES)
def test_status_in_customer_words(client, events, state, headline, message):
    html = page(client, order_after(events, **state))
    assert f">{headline}</h1>" in html
    assert message in html


def test_progress_marks_done_current_and_upcoming_in_words(client):
    html = page(client, order_after(HAPPY[:3], status="processing", saga_status="running"))
    progress = html[html.index('class="customer-progress"'):]
    assert progress.index("Payment taken") < progress.index("Packed and handed")
    assert 'stage-done"' in progress and 'aria-current="step"' in progress
    assert "Done" in progress and "In progress" in progress and "Not yet" in progress


def test_no_staff_only_data_on_the_page(client):
    order = order_after(HAPPY[:2] + [("charge", "failed")], status="processing", saga_status="stuck",
                        current_step="charge", last_error="GatewayUnavailable: sandbox outage trace",
                        fault_plan={"payment": "transient:3"})
    Payment.objects.create(order=order, kind="charge", amount=Decimal(10), currency="EUR",
                           idempotency_key=f"{order.workflow_id}:charge", gateway_reference="pay-secret-1")
    html = page(client, order)
    for secret in ("GatewayUnavailable", "sandbox", "transient", "staff-only", "pay-secret-1", "stuck",
                   f"order-{order.pk}", f"saga-{order.pk}", f"/orders/{order.pk}/", "ada@example.com"):
        assert secret not in html, secret
    assert order.number in html


def test_unknown_token_is_404_and_the_page_needs_no_login(client):
    assert client.get(reverse("customer:status", args=["no-such-token"])).status_code == 404
    assert client.get(reverse("customer:status", args=["x" * 100])).status_code == 404
    assert client.get("/status/ab%00cd/").status_code == 404
    assert client.get("/status/%C3%BC%C3%BC/").status_code == 404
    order = order_after([])
    response = client.get(reverse("customer:status", args=[order.public_token]))
    assert response.status_code == 200
    assert response["Referrer-Policy"] == "no-referrer"
    assert f'ws-connect="/ws/status/{order.public_token}/"' in response.content.decode()
