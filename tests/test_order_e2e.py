"""End to end through the pages with a real saga: create an order with the form, watch it get
stuck on the detail page and its socket, retry it with the button's endpoint, see it finish."""

import re

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.test import Client
from django.urls import reverse

from orders.live import reader_connection_close
from orders.models import Order
from orders.status import SagaStatus

from .conftest import order_state, wait_for
from .factories import make_product
from .websockets import open_socket, receive_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _close_socket_reads():
    """The sockets read on their own thread, which keeps its connection for a moment after
    the last read; close it so Postgres can drop the test database at the end."""
    yield
    reader_connection_close()


async def test_order_created_on_the_page_is_rescued_and_shows_every_step_succeeded(saga_env, staff_user):
    operator = await sync_to_async(staff_user)("operator")
    client = Client()
    await sync_to_async(client.force_login)(operator)
    product = await sync_to_async(make_product)(price="19.90", stock=10)

    # The sandbox gateway times out three times: the charge step gives up and the saga is stuck.
    response = await sync_to_async(client.post)(reverse("orders:create"), {
        "customer_name": "Katherine Johnson", "customer_email": "katherine@example.com",
        "line-0-product": str(product.pk), "line-0-quantity": "2", "fault_preset": "gateway_outage",
        "ship_line1": "Rue de Rivoli 1", "ship_postcode": "75001", "ship_city": "Paris", "ship_country": "FR",
    })
    order = await sync_to_async(Order.objects.get)()
    assert response.status_code == 302 and response["Location"] == reverse("orders:detail", args=[order.pk])
    await wait_for(lambda: order_state(order.pk).saga_status == SagaStatus.STUCK, message="stuck at charge")

    html = (await sync_to_async(client.get)(reverse("orders:detail", args=[order.pk]))).content.decode()
    assert f'id="saga-{order.pk}-step-charge-head" class="step-summary state-stuck"' in html
    assert f"/orders/{order.pk}/actions/retry/" in html

    socket = await open_socket(f"/ws/orders/{order.pk}/", operator)
    assert "state-stuck" in await socket.receive_from(timeout=5)

    response = await sync_to_async(client.post)(
        reverse("orders:action", args=[order.pk, "retry"]), {"reason": "gateway is back"},
        HTTP_HX_REQUEST="true", HTTP_HX_TARGET=f"order-actions-{order.pk}",
    )
    assert response.status_code == 200
    assert f"Retry sent to the saga of {order.number}" in response.content.decode()
    assert await saga_env.result(order) == "completed"

    # The socket saw the saga finish; the page shows every step succeeded, and who retried.
    await receive_until(socket, "saga finished")
    await socket.disconnect()
    html = (await sync_to_async(client.get)(reverse("orders:detail", args=[order.pk]))).content.decode()
    step_states = re.findall(rf'id="saga-{order.pk}-step-(\w+)-head" class="step-summary state-(\w+)"', html)
    assert step_states == [(step, "succeeded") for step in
                           ("validate", "reserve", "charge", "confirm", "ship", "notify")]
    assert f"by {operator.username}" in html and "gateway is back" in html
    # Nothing left for the saga; its parcel is on the way, so only the delivery's actions fit (issue 8).
    assert "/actions/retry/" not in html and f"/orders/{order.pk}/actions/mark_delivered/" in html
    # The test client ran on asgiref's sync thread: close the connection it left there.
    await sync_to_async(lambda: connection.close())()
