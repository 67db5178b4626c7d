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
# A frame already rendered when the signal's close arrives may still go out; nothing later.
IN_FLIGHT = 0.3


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


async def assert_closed_within(communicator: WebsocketCommunicator, seconds: float, *, frames_for: float = 0.0) -> float:
    """The 4403 close comes within `seconds`. Before it, data frames only in the first
    `frames_for` seconds: where no signal announces the change, a frame may still go out on
    an answer checked less than a second before it (orders.live.access_checks), not later.
    Returns how long the close took."""
    started = time.monotonic()
    while True:
        output = await communicator.receive_output(timeout=max(0.01, started + seconds - time.monotonic()))
        took = time.monotonic() - started
        if output == CLOSED:
            return took
        assert output["type"] == "websocket.send" and took <= frames_for, (
            f"expected the 4403 close, got {str(output)[:200]} after {took:.2f}s")


# A frame's own check reuses an answer at most this old (orders.live.access_checks.ttl), plus slack.
FRAME_CHECK_WINDOW = 1.5


async def assert_silent_after_close(communicator: WebsocketCommunicator, order) -> None:
    await sync_to_async(record_event)(order, kind="retrying")
    assert await communicator.receive_nothing(timeout=1.0), "a frame was sent after the socket was closed"


@pytest.fixture
def order(db):
    return stuck_order()


@pytest.fixture
def signals_only(settings):
    """No periodic check within the test's time: a close can only come from the signal (ops.signals)."""
    settings.SOCKET_ACCESS_CHECK_SECONDS = 60


@pytest.mark.parametrize("path", ["/ws/ops/", "/ws/orders/", "detail"])
async def test_signing_out_closes_that_sessions_sockets_at_once(staff_user, order, signals_only, path):
    path = f"/ws/orders/{order.pk}/" if path == "detail" else path
    viewer = await sync_to_async(staff_user)("viewer")
    client = await sync_to_async(signed_in)(viewer)
    communicator = await open_as(client, path)
    try:
        await first_frame(communicator, path)
        await sync_to_async(client.post)("/accounts/logout/")
        assert await assert_closed_within(communicator, SIGNAL_WITHIN, frames_for=IN_FLIGHT) < SIGNAL_WITHIN
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
        await assert_closed_within(on_laptop, SIGNAL_WITHIN, frames_for=IN_FLIGHT)

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


async def test_deactivating_the_user_closes_their_sockets(staff_user, order, signals_only):
    viewer = await sync_to_async(staff_user)("viewer")
    client = await sync_to_async(signed_in)(viewer)
    sockets = [await open_as(client, path) for path in ("/ws/ops/", f"/ws/orders/{order.pk}/", "/ws/orders/")]
    try:
        await first_frame(sockets[0], "/ws/ops/")
        await first_frame(sockets[1], "detail")
        viewer.is_active = False
        await sync_to_async(viewer.save)()
        for socket in sockets:
            await assert_closed_within(socket, SIGNAL_WITHIN, frames_for=IN_FLIGHT)
        await assert_silent_after_close(sockets[1], order)
    finally:
        for socket in sockets:
            await socket.disconnect()


async def test_a_demoted_operator_loses_the_detail_socket_opened_with_operator_rights(staff_user, order, signals_only):
    operator = await sync_to_async(staff_user)("operator")
    client = await sync_to_async(signed_in)(operator)
    detail = await open_as(client, f"/ws/orders/{order.pk}/")
    try:
        frame = await detail.receive_from(timeout=5)
        assert "Compensate" in frame or "Retry" in frame  # the operator's buttons, rendered for them
        await sync_to_async(lambda: operator.groups.set([Group.objects.get(name="viewer")]))()
        await assert_closed_within(detail, SIGNAL_WITHIN, frames_for=IN_FLIGHT)
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
        await assert_closed_within(communicator, PERIODIC_WITHIN, frames_for=FRAME_CHECK_WINDOW)
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
        await assert_closed_within(communicator, PERIODIC_WITHIN, frames_for=FRAME_CHECK_WINDOW)
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


async def test_a_changed_password_closes_sockets_of_older_sessions(staff_user, order, signals_only):
    viewer = await sync_to_async(staff_user)("viewer")
    client = await sync_to_async(signed_in)(viewer)
    communicator = await open_as(client, "/ws/ops/")
    try:
        await first_frame(communicator, "/ws/ops/")

        def change_password():
            viewer.set_password("a-new-staff-pass-456")
            viewer.save()

        await sync_to_async(change_password)()
        await assert_closed_within(communicator, SIGNAL_WITHIN, frames_for=IN_FLIGHT)
    finally:
        await communicator.disconnect()
