"""Open websockets follow the session (issue 11): a sign-out, a deactivation, a role change
that takes a permission away, or an expired session closes every open staff socket with
4403 within seconds, and no frame is sent after that. Real sockets over the ASGI app and
the Redis channel layer; the sessions are real database sessions.

Other test runs may publish to the same groups, so each test records its own event and
looks for it rather than counting on silence.
"""

import time
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import Group, Permission
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone

from ordersite.asgi import application

from .test_ops_data import record_event, stuck_order

pytestmark = pytest.mark.django_db(transaction=True)

CLOSED = {"type": "websocket.close", "code": 4403}
# The periodic check, plus the time a check and its close take on a busy machine.
PERIODIC_WITHIN = settings.SOCKET_ACCESS_CHECK_SECONDS + 2.0
SIGNAL_WITHIN = 2.0


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


async def open_as(client: Client, path: str) -> WebsocketCommunicator:
    cookie = client.cookies["sessionid"].value
    headers = [(b"origin", b"http://testserver"), (b"host", b"testserver"), (b"cookie", f"sessionid={cookie}".encode())]
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    return communicator


async def first_frame(communicator: WebsocketCommunicator, path: str) -> None:
    """The sockets that render on connect send their page's live parts first."""
    if path != "/ws/orders/":
        output = await communicator.receive_output(timeout=5)
        assert output["type"] == "websocket.send", output


async def assert_closed_within(communicator: WebsocketCommunicator, seconds: float) -> float:
    """The next output is the 4403 close (no data frame before it), within `seconds`; then
    nothing more comes even as events are recorded. Returns how long the close took."""
    started = time.monotonic()
    output = await communicator.receive_output(timeout=seconds)
    took = time.monotonic() - started
    assert output == CLOSED, f"expected the 4403 close, got a frame: {str(output)[:200]}"
    return took


async def assert_silent_after_close(communicator: WebsocketCommunicator, order) -> None:
    await sync_to_async(record_event)(order, kind="retrying")
    assert await communicator.receive_nothing(timeout=1.0), "a frame was sent after the socket was closed"


@pytest.fixture
def order(db):
    return stuck_order()


@pytest.mark.parametrize("path", ["/ws/ops/", "/ws/orders/", "detail"])
async def test_signing_out_closes_that_sessions_sockets_at_once(staff_user, order, path):
    path = f"/ws/orders/{order.pk}/" if path == "detail" else path
    viewer = await sync_to_async(staff_user)("viewer")
    client = await sync_to_async(signed_in)(viewer)
    communicator = await open_as(client, path)
    try:
        await first_frame(communicator, path)
        await sync_to_async(client.post)("/accounts/logout/")
        assert await assert_closed_within(communicator, SIGNAL_WITHIN) < SIGNAL_WITHIN
        await assert_silent_after_close(communicator, order)
    finally:
        await communicator.disconnect()


async def test_signing_out_leaves_the_users_other_sessions_open(staff_user, order):
    viewer = await sync_to_async(staff_user)("viewer")
    laptop, phone = await sync_to_async(signed_in)(viewer), await sync_to_async(signed_in)(viewer)
    on_laptop, on_phone = await open_as(laptop, "/ws/ops/"), await open_as(phone, "/ws/ops/")
    try:
        await first_frame(on_laptop, "/ws/ops/")
        await first_frame(on_phone, "/ws/ops/")
        await sync_to_async(laptop.post)("/accounts/logout/")
        await assert_closed_within(on_laptop, SIGNAL_WITHIN)

        event = await sync_to_async(record_event)(order, kind="retrying")
        deadline = time.monotonic() + PERIODIC_WITHIN + 2
        while True:  # past a periodic check too: the phone's session still holds
            frame = await on_phone.receive_output(timeout=max(0.1, deadline - time.monotonic()))
            assert frame["type"] == "websocket.send", frame
            if f'id="ops-event-{event.pk}"' in frame["text"]:
                break
        # Past another periodic check, it is still open (frames may come; a close may not).
        until = time.monotonic() + settings.SOCKET_ACCESS_CHECK_SECONDS + 1
        while (left := until - time.monotonic()) > 0 and not await on_phone.receive_nothing(timeout=left):
            assert (await on_phone.receive_output())["type"] == "websocket.send"
    finally:
        await on_laptop.disconnect()
        await on_phone.disconnect()


async def test_deactivating_the_user_closes_their_sockets(staff_user, order):
    viewer = await sync_to_async(staff_user)("viewer")
    client = await sync_to_async(signed_in)(viewer)
    sockets = [await open_as(client, path) for path in ("/ws/ops/", f"/ws/orders/{order.pk}/", "/ws/orders/")]
    try:
        await first_frame(sockets[0], "/ws/ops/")
        await first_frame(sockets[1], "detail")
        viewer.is_active = False
        await sync_to_async(viewer.save)()
        for socket in sockets:
            await assert_closed_within(socket, SIGNAL_WITHIN)
        await assert_silent_after_close(sockets[1], order)
    finally:
        for socket in sockets:
            await socket.disconnect()


async def test_a_demoted_operator_loses_the_detail_socket_opened_with_operator_rights(staff_user, order):
    operator = await sync_to_async(staff_user)("operator")
    client = await sync_to_async(signed_in)(operator)
    detail = await open_as(client, f"/ws/orders/{order.pk}/")
    try:
        frame = await detail.receive_from(timeout=5)
        assert "Compensate" in frame or "Retry" in frame  # the operator's buttons, rendered for them
        await sync_to_async(lambda: operator.groups.set([Group.objects.get(name="viewer")]))()
        await assert_closed_within(detail, SIGNAL_WITHIN)
        await assert_silent_after_close(detail, order)
    finally:
        await detail.disconnect()

    # Signed in again as a viewer, the same page's socket opens (for reading).
    client = await sync_to_async(signed_in)(operator)
    detail = await open_as(client, f"/ws/orders/{order.pk}/")
    try:
        assert "Compensate" not in await detail.receive_from(timeout=5)
    finally:
        await detail.disconnect()


async def test_a_role_losing_its_permission_closes_its_members_sockets_by_the_periodic_check(staff_user, order):
    # Editing a group's permissions touches no user row: no signal, the periodic check sees it.
    viewer = await sync_to_async(staff_user)("viewer")
    client = await sync_to_async(signed_in)(viewer)
    communicator = await open_as(client, "/ws/ops/")

    def take_view_orders_from_viewers():
        Group.objects.get(name="viewer").permissions.remove(Permission.objects.get(codename="view_order"))

    try:
        await first_frame(communicator, "/ws/ops/")
        await sync_to_async(take_view_orders_from_viewers)()
        await assert_closed_within(communicator, PERIODIC_WITHIN)
    finally:
        await communicator.disconnect()


async def test_an_expired_session_closes_the_socket_within_seconds(staff_user, order):
    viewer = await sync_to_async(staff_user)("viewer")
    client = await sync_to_async(signed_in)(viewer)
    communicator = await open_as(client, "/ws/ops/")
    key = client.cookies["sessionid"].value
    try:
        await first_frame(communicator, "/ws/ops/")
        await sync_to_async(lambda: Session.objects.filter(session_key=key).update(
            expire_date=timezone.now() - timedelta(seconds=1)))()
        await assert_closed_within(communicator, PERIODIC_WITHIN)
        await assert_silent_after_close(communicator, order)
    finally:
        await communicator.disconnect()


async def test_an_event_after_the_session_ended_gets_the_close_not_a_frame(staff_user, order, settings):
    # No periodic check in the way (a long interval): the frame's own check refuses it.
    settings.SOCKET_ACCESS_CHECK_SECONDS = 60
    viewer = await sync_to_async(staff_user)("viewer")
    client = await sync_to_async(signed_in)(viewer)
    communicator = await open_as(client, f"/ws/orders/{order.pk}/")
    key = client.cookies["sessionid"].value
    try:
        await first_frame(communicator, "detail")
        await sync_to_async(lambda: Session.objects.filter(session_key=key).delete())()
        time.sleep(1.1)  # older than the shared answer's lifetime (orders.live.access_checks)
        await sync_to_async(record_event)(order, kind="retrying")
        assert await communicator.receive_output(timeout=5) == CLOSED
        assert await communicator.receive_nothing(timeout=1.0)
    finally:
        await communicator.disconnect()


async def test_a_changed_password_closes_sockets_of_older_sessions(staff_user, order):
    viewer = await sync_to_async(staff_user)("viewer")
    client = await sync_to_async(signed_in)(viewer)
    communicator = await open_as(client, "/ws/ops/")
    try:
        await first_frame(communicator, "/ws/ops/")

        def change_password():
            viewer.set_password("a-new-staff-pass-456")
            viewer.save()

        await sync_to_async(change_password)()
        await assert_closed_within(communicator, SIGNAL_WITHIN)
    finally:
        await communicator.disconnect()
