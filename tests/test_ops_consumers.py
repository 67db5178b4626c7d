"""The dashboard socket ws/ops/, against the real Redis pub/sub channel layer.

Other test runs may share this Redis and publish saga events to the same `ops` group, so
these tests look for their own event in what arrives rather than counting on silence.
"""

import asyncio
import re
import time

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from orders.broadcast import OPS_GROUP
from orders.live import COALESCE_SECONDS
from ops import consumers

from .test_ops_data import record_event, stuck_order
from .websockets import open_socket, receive_until

pytestmark = pytest.mark.django_db(transaction=True)


async def connect(user=None, path: str = "/ws/ops/") -> WebsocketCommunicator:
    return await open_socket(path, user)



async def test_without_a_session_the_socket_is_closed_with_4403():
    communicator = await connect()
    assert await communicator.receive_output(timeout=5) == {"type": "websocket.close", "code": 4403}
    await communicator.wait()


async def test_a_user_without_staff_permission_is_closed_with_4403():
    from django.contrib.auth import get_user_model

    user = await sync_to_async(get_user_model().objects.create_user)("shopper", password="x-123456789")
    communicator = await connect(user)
    assert await communicator.receive_output(timeout=5) == {"type": "websocket.close", "code": 4403}


async def test_viewer_gets_counts_on_connect_and_an_update_after_a_saga_event(staff_user):
    viewer = await sync_to_async(staff_user)("viewer")
    order = await sync_to_async(stuck_order)()
    communicator = await connect(viewer)
    try:
        first = await communicator.receive_from(timeout=5)
        assert '<section id="ops-counts" aria-labelledby="ops-counts-heading" hx-swap-oob="true">' in first
        assert '<section id="ops-activity" aria-labelledby="ops-activity-heading" hx-swap-oob="true">' in first
        assert re.search(r'data-count="stuck">1<', first)
        assert order.number in first

        event = await sync_to_async(record_event)(order, step="charge", kind="retrying")
        update = await receive_until(communicator, f'id="ops-event-{event.pk}"')
        assert 'id="ops-counts"' in update and ">retrying</span>" in update
    finally:
        await communicator.disconnect()


async def test_a_burst_of_events_is_answered_by_a_few_renders_shared_by_all_sockets(staff_user, monkeypatch):
    renders = []
    real_render = consumers.dashboard_live_html

    def counting_render():
        renders.append(time.monotonic())
        return real_render()

    monkeypatch.setattr(consumers, "dashboard_live_html", counting_render)
    viewer = await sync_to_async(staff_user)("viewer")
    order = await sync_to_async(stuck_order)()
    sockets = [await connect(viewer) for _ in range(3)]
    try:
        for socket in sockets:
            await socket.receive_from(timeout=5)
        renders.clear()

        # One real event (recorded, broadcast after commit) and forty more messages sent
        # straight to the group, all within a few milliseconds.
        marker = await sync_to_async(record_event)(order, kind="started")
        layer = get_channel_layer()
        for _ in range(40):
            await layer.group_send(OPS_GROUP, {"type": "saga.event", "event": {}, "order": {}})
        for socket in sockets:
            await receive_until(socket, f'id="ops-event-{marker.pk}"')
        await asyncio.sleep(COALESCE_SECONDS * 3)
        # 41 events to 3 sockets would be 123 renders without coalescing and sharing; the
        # marker's broadcast may land in a second window, and another test run may publish.
        assert 1 <= len(renders) <= 4, renders
    finally:
        for socket in sockets:
            await socket.disconnect()


async def test_reconnecting_catches_up_with_events_missed_while_disconnected(staff_user):
    viewer = await sync_to_async(staff_user)("viewer")
    order = await sync_to_async(stuck_order)()
    communicator = await connect(viewer)
    await communicator.receive_from(timeout=5)
    await communicator.disconnect()
    missed = await sync_to_async(record_event)(order, kind="retrying")
    communicator = await connect(viewer)
    try:
        assert f'id="ops-event-{missed.pk}"' in await communicator.receive_from(timeout=5)
    finally:
        await communicator.disconnect()


async def test_the_dashboards_flagged_sagas_card_socket_is_routed(staff_user):
    communicator = await connect(path="/ws/ops/background/flags/")
    assert await communicator.receive_output(timeout=5) == {"type": "websocket.close", "code": 4403}
    viewer = await sync_to_async(staff_user)("viewer")
    communicator = await connect(viewer, "/ws/ops/background/flags/")
    try:
        assert 'id="stall-flags"' in await communicator.receive_from(timeout=5)
    finally:
        await communicator.disconnect()
