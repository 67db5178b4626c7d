"""The order sockets (ws/orders/, ws/orders/<pk>/, ws/status/<token>/) through the real ASGI
stack (origin check, session auth) and the real Redis pub/sub channel layer.

Events are recorded with the saga's own service (orders.services.events.saga_event_record)
in a committed transaction, so they travel the way they do in production: on_commit, the
broadcast bridge, Redis, the consumer. Other test runs may share this Redis, so the tests
wait for their own (uniquely worded) event instead of counting on silence.
"""

import re
import uuid

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import transaction

from orders.live import reader_connection_close
from orders.locks import lock_order
from orders.models import Order
from orders.services.events import order_saga_state_set, saga_event_record
from orders.services.saga import saga_step_failed
from ordersite.asgi import application

from .factories import make_order
from .saga_states import order_running
from .websockets import open_socket, receive_until, session_cookie_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _close_socket_reads():
    """The sockets read on their own thread, which keeps its connection for a moment after
    the last read; close it so Postgres can drop the test database at the end."""
    yield
    reader_connection_close()


# --- helpers --------------------------------------------------------------------------------


def new_order(*, running_at: str = "", last_error: str = "") -> Order:
    """A placed order; with `running_at`, validated and that step under way (tests/saga_states.py),
    and with `last_error`, that step's first attempt failed with it."""
    order = make_order(start_saga=False)
    if running_at:
        order_running(order, step=running_at)
    if last_error:
        saga_step_failed(order_id=order.pk, step=running_at, step_key=f"{order.workflow_id}:{running_at}", attempt=1,
                         error=last_error)
    order.refresh_from_db()
    return order


def record_event(order_id: int, *, step: str, kind: str, detail: str = "", attempt: int = 1, **state) -> None:
    """One saga event, committed, as an activity records it (with an order state change)."""
    with transaction.atomic():
        order = lock_order(order_id)
        if state:
            order_saga_state_set(order, **state)
        saga_event_record(order, kind=kind, step=step, detail=detail, attempt=attempt)


async def assert_closed_with(communicator: WebsocketCommunicator, code: int) -> None:
    assert await communicator.receive_output(timeout=5) == {"type": "websocket.close", "code": code}
    await communicator.wait()


# --- who may connect --------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/ws/orders/", "/ws/orders/{pk}/"])
async def test_without_a_session_the_staff_sockets_close_with_4403(path):
    order = await sync_to_async(new_order)()
    communicator = await open_socket(path.format(pk=order.pk))
    await assert_closed_with(communicator, 4403)


async def test_a_user_without_a_staff_role_is_closed_with_4403(django_user_model):
    user = await sync_to_async(django_user_model.objects.create_user)("walker", password="pw-123456")
    order = await sync_to_async(new_order)()
    communicator = await open_socket(f"/ws/orders/{order.pk}/", user)
    await assert_closed_with(communicator, 4403)


async def test_detail_socket_for_an_unknown_order_closes_with_4404(staff_user):
    viewer = await sync_to_async(staff_user)("viewer")
    communicator = await open_socket("/ws/orders/987654/", viewer)
    await assert_closed_with(communicator, 4404)


async def test_a_page_from_another_site_is_refused(staff_user):
    viewer = await sync_to_async(staff_user)("viewer")
    cookie = await sync_to_async(session_cookie_for)(viewer)
    communicator = WebsocketCommunicator(application, "/ws/orders/", headers=[
        (b"origin", b"http://evil.example"), (b"cookie", f"sessionid={cookie}".encode())])
    connected, _ = await communicator.connect(timeout=5)
    assert not connected


# --- the detail socket ------------------------------------------------------------------------


async def test_viewer_gets_the_page_on_connect_and_each_new_event(staff_user):
    viewer = await sync_to_async(staff_user)("viewer")
    order = await sync_to_async(new_order)(running_at="charge")
    communicator = await open_socket(f"/ws/orders/{order.pk}/", viewer)

    first = await communicator.receive_from(timeout=5)
    for root in (f'id="saga-{order.pk}"', f'id="order-summary-{order.pk}"', f'id="order-actions-{order.pk}"',
                 f'id="order-ledger-{order.pk}"', f'id="order-{order.pk}-waterfall"'):
        assert root in first
    assert first.count('hx-swap-oob="true"') == 5
    assert "hx-post=" not in first  # a viewer's buttons partial has no buttons

    detail = f"Charged 10.00 EUR (ref-{uuid.uuid4().hex[:8]})"
    await sync_to_async(record_event)(order.pk, step="charge", kind="succeeded", detail=detail)
    frame = await receive_until(communicator, detail)
    # A forward step's event re-renders that step's track and the timeline header, plus the
    # ledger section the step moves (money, for a charge), all out of band; the order's state
    # did not move, so neither the summary nor the buttons come along.
    assert f'<div id="saga-{order.pk}-step-charge-head" class="step-summary state-succeeded" hx-swap-oob="true">' in frame
    # The row carries its event's id: live.js drops one already on the page (the snapshot's).
    assert re.search(rf'<ol hx-swap-oob="beforeend:#saga-{order.pk}-step-charge-events"><li id="saga-event-\d+" data-append-once '
                     r'class="saga-event kind-succeeded">', frame)
    assert frame.count('class="saga-event ') == 1  # only the new event: the page has the others
    assert f'id="saga-{order.pk}-header"' in frame
    assert f'id="order-summary-{order.pk}"' not in frame and f'id="order-actions-{order.pk}"' not in frame
    assert f'id="order-ledger-{order.pk}-payments"' in frame
    assert f'id="order-ledger-{order.pk}-stock"' not in frame and f'id="saga-{order.pk}-step-reserve"' not in frame

    # A compensation brings the reverse track, as its own section.
    undo = f"Refunded 10.00 EUR ({uuid.uuid4().hex[:8]})"
    await sync_to_async(record_event)(order.pk, step="charge", kind="compensated", detail=undo)
    frame = await receive_until(communicator, undo)
    assert f'<section id="saga-{order.pk}-compensation" class="compensation"' in frame
    assert f'id="saga-{order.pk}-step-charge-head" class="step-summary state-compensated"' in frame

    # The saga finishing: its event, steps never reached become "not run", the new status,
    # and then, in a frame of their own, the buttons, as those that no longer fit go.
    await sync_to_async(record_event)(order.pk, step="", kind="finished", detail="Payment declined",
                                      status="failed", saga_status="compensated")
    frame = await receive_until(communicator, "Payment declined")
    assert f'<section id="saga-{order.pk}-saga-events" class="saga-level"' in frame
    assert f'id="saga-{order.pk}-step-ship-head" class="step-summary state-skipped"' in frame
    assert "the saga has finished" in frame
    assert f'id="order-summary-{order.pk}"' in frame and "compensated" in frame
    assert f'id="order-actions-{order.pk}"' not in frame
    buttons = await communicator.receive_from(timeout=5)
    assert f'id="order-actions-{order.pk}"' in buttons
    assert "saga-event" not in buttons
    await communicator.disconnect()


async def test_operator_buttons_follow_the_saga_state(staff_user):
    operator = await sync_to_async(staff_user)("operator")
    order = await sync_to_async(new_order)(running_at="charge")
    communicator = await open_socket(f"/ws/orders/{order.pk}/", operator)
    first = await communicator.receive_from(timeout=5)
    assert f'/orders/{order.pk}/actions/cancel/' in first and "/actions/retry/" not in first

    detail = f"gateway down {uuid.uuid4().hex[:8]}"
    await sync_to_async(record_event)(order.pk, step="charge", kind="stuck", detail=detail, saga_status="stuck")
    await receive_until(communicator, detail)
    # The buttons follow the event's frame, in one of their own.
    buttons = await communicator.receive_from(timeout=5)
    assert f'/orders/{order.pk}/actions/retry/' in buttons and f'/orders/{order.pk}/actions/compensate/' in buttons
    await communicator.disconnect()


async def test_reconnect_shows_what_happened_while_disconnected(staff_user):
    viewer = await sync_to_async(staff_user)("viewer")
    order = await sync_to_async(new_order)(running_at="reserve")
    communicator = await open_socket(f"/ws/orders/{order.pk}/", viewer)
    await communicator.receive_from(timeout=5)
    await communicator.disconnect()

    missed = f"Reserved 1 x Product while nobody watched {uuid.uuid4().hex[:8]}"
    await sync_to_async(record_event)(order.pk, step="reserve", kind="succeeded", detail=missed)

    communicator = await open_socket(f"/ws/orders/{order.pk}/", viewer)
    assert missed in await communicator.receive_from(timeout=5)
    await communicator.disconnect()


# --- the list socket --------------------------------------------------------------------------


async def test_list_socket_sends_the_row_of_the_order_an_event_touched(staff_user):
    viewer = await sync_to_async(staff_user)("viewer")
    order = await sync_to_async(new_order)(running_at="charge")
    communicator = await open_socket("/ws/orders/", viewer)
    await sync_to_async(record_event)(order.pk, step="charge", kind="stuck", detail="gateway down",
                                      saga_status="stuck")
    frame = await receive_until(communicator, f'id="order-row-{order.pk}"')
    assert frame.lstrip().startswith("<tr") and 'hx-swap-oob="true"' in frame
    assert order.number in frame and "stuck" in frame
    await communicator.disconnect()


# --- the customer socket ----------------------------------------------------------------------


async def test_customer_socket_with_a_wrong_token_closes_with_4404():
    await sync_to_async(new_order)()
    communicator = await open_socket("/ws/status/not-a-real-token/")
    await assert_closed_with(communicator, 4404)


async def test_customer_socket_follows_the_order_without_staff_data():
    order = await sync_to_async(new_order)(running_at="charge",
                                           last_error="internal gateway trace 0xdeadbeef")
    communicator = await open_socket(f"/ws/status/{order.public_token}/")
    first = await communicator.receive_from(timeout=5)
    assert 'id="customer-status"' in first and "We&#x27;ve received your order" in first

    await sync_to_async(record_event)(order.pk, step="charge", kind="succeeded", detail="Charged (pay-123)")
    frame = await receive_until(communicator, "Payment taken</h1>")
    for secret in ("0xdeadbeef", "pay-123", f"order-{order.pk}", f"saga-{order.pk}", "hx-post"):
        assert secret not in frame
    await communicator.disconnect()
