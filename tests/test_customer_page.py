"""The customer's order page: public, reached by the token link, in plain customer language."""

from functools import partial

import pytest
from django.urls import reverse

from orders.models import Order

from .factories import make_order
from .saga_states import (
    order_advanced, order_cancelled, order_compensated, order_delivered, order_rejected, order_stuck,
)

pytestmark = pytest.mark.django_db


def order_after(build=None, **order) -> Order:
    """An order placed, then taken where a saga would have left it by `build` (tests/saga_states.py)."""
    placed = make_order(start_saga=False, **order)
    if build is not None:
        build(placed)
    placed.refresh_from_db()
    return placed


def page(client, order) -> str:
    response = client.get(reverse("customer:status", args=[order.public_token]))
    assert response.status_code == 200
    return response.content.decode().replace("&#x27;", "'")


CASES = [
    (None, "We've received your order", "We're checking it"),
    (partial(order_advanced, through="charge"), "Payment taken", "packing"),
    (partial(order_advanced, through="ship"), "Packed and handed to the carrier", "on its way"),
    (order_delivered, "Delivered", "has arrived"),
    (partial(order_compensated, failed_step="charge", error="Card declined"), "We couldn't complete your order",
     "You have not been charged."),
    (partial(order_compensated, failed_step="ship", error="Carrier refused the shipment"),
     "We couldn't complete your order", "We've refunded your payment in full."),
    (order_rejected, "We couldn't accept your order", "You have not been charged."),
    (partial(order_cancelled, after="reserve"), "Your order was cancelled", "You have not been charged."),
]


@pytest.mark.parametrize(("build", "headline", "message"), CASES)
def test_status_in_customer_words(client, build, headline, message):
    html = page(client, order_after(build))
    assert f">{headline}</h1>" in html
    assert message in html


def test_progress_marks_done_current_and_upcoming_in_words(client):
    html = page(client, order_after(partial(order_advanced, through="charge")))
    progress = html[html.index('class="customer-progress"'):]
    assert progress.index("Payment taken") < progress.index("Packed and handed")
    assert 'stage-done"' in progress and 'aria-current="step"' in progress
    assert "Done" in progress and "In progress" in progress and "Not yet" in progress


def test_no_staff_only_data_on_the_page(client):
    def stuck_at_shipping(order):
        order_advanced(order, through="confirm")
        order_stuck(order, step="ship", error="GatewayUnavailable: sandbox outage trace")

    # Charged, then stuck at shipping: the gateway's reference, the error, the fault plan and
    # the saga's own event details are staff-only.
    order = order_after(stuck_at_shipping, fault_plan={"shipping": "transient:3"})
    charge = order.payments.get(kind="charge")
    staff_details = [e.detail for e in order.events.exclude(detail="")]
    assert charge.gateway_reference and any(charge.gateway_reference in d for d in staff_details)
    html = page(client, order)
    for secret in ("GatewayUnavailable", "sandbox", "transient", *staff_details, charge.gateway_reference, "stuck",
                   f"order-{order.pk}", f"saga-{order.pk}", f"/orders/{order.pk}/", "ada@example.com"):
        assert secret not in html, secret
    assert order.number in html


def test_unknown_token_is_404_and_the_page_needs_no_login(client):
    assert client.get(reverse("customer:status", args=["no-such-token"])).status_code == 404
    assert client.get(reverse("customer:status", args=["x" * 100])).status_code == 404
    assert client.get("/status/ab%00cd/").status_code == 404
    assert client.get("/status/%C3%BC%C3%BC/").status_code == 404
    order = order_after()
    response = client.get(reverse("customer:status", args=[order.public_token]))
    assert response.status_code == 200
    assert response["Referrer-Policy"] == "no-referrer"
    assert f'ws-connect="/ws/status/{order.public_token}/"' in response.content.decode()
