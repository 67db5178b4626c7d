"""Live timeline rows never twice (issue 11): an event already on the page (in the connect
snapshot) that reaches the socket again is dropped by its id."""

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import transaction
from playwright.async_api import expect

from orders.broadcast import order_group
from orders.models import SagaEvent
from orders.services.events import saga_event_record

from ..factories import make_order
from ..saga_states import order_completed

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators"),
]


def completed_order():
    order = make_order(start_saga=False)
    order_completed(order)
    return order


def validate_event(order_id: int) -> SagaEvent:
    return SagaEvent.objects.filter(order_id=order_id, step="validate", kind="succeeded").get()


def record_late_event(order) -> SagaEvent:
    with transaction.atomic():
        return saga_event_record(order, kind="signal", step="validate", detail="a late signal")


async def test_an_event_in_the_snapshot_and_on_the_socket_shows_once(pages, staff_user):
    viewer = await sync_to_async(staff_user)("viewer")
    order = await sync_to_async(completed_order)()
    event = await sync_to_async(validate_event)(order.pk)
    page = await pages.page(viewer)
    await page.goto(f"/orders/{order.pk}/")
    rows = page.locator(f"#saga-event-{event.pk}")
    await expect(rows).to_have_count(1)
    await expect(page.locator("#live-status")).to_be_hidden()
    # The socket is open once its connect frame has been swapped in: wait for the header it re-sends.
    await page.wait_for_function("() => window.__snapshots.length > 0")
    await page.wait_for_timeout(500)

    # The race: the event reaches the socket after the snapshot that already holds it.
    await get_channel_layer().group_send(order_group(order.pk), {
        "type": "saga.event", "event": {"id": event.pk, "kind": "succeeded", "step": "validate"},
        "order": {"order_id": order.pk},
    })
    # A new event after it: once it is on the page, the duplicate's frame has been handled.
    late = await sync_to_async(record_late_event)(order)
    await expect(page.locator(f"#saga-event-{late.pk}")).to_have_count(1)
    await expect(rows).to_have_count(1)
    steps = page.locator(f"#saga-{order.pk}-step-validate-events > li")
    await expect(steps).to_have_count(2)  # the validation that succeeded, and the late signal
