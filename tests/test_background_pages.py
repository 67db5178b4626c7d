"""The flagged-sagas page, the dashboard card (template tag) and its live socket, and the
Celery wiring (beat schedule, task names)."""

import time
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import connection, transaction
from django.template import Context, Template
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import path, reverse
from django.utils import timezone

from ops.consumers_background import StallFlagsConsumer
from ops.models import StallFlag, SweepRun
from ops.stalls.services import stall_flags_broadcast
from orders.locks import lock_order
from orders.services.events import saga_event_record
from orders.status import OrderStatus, SagaStatus
from ordersite.celery import app as celery_app

from .background_support import order_rows_create

pytestmark = pytest.mark.django_db(transaction=True)

FLAGS_URL = "/ops/background/flags/"


def flagged_orders(count: int, *, kind=StallFlag.Kind.NO_POLLER, detail="No worker polling the payments queue"):
    orders = order_rows_create(count, saga_status=SagaStatus.RUNNING, status=OrderStatus.PROCESSING,
                               quiet_for=timedelta(minutes=10))
    StallFlag.objects.bulk_create(
        StallFlag(order=o, kind=kind, detail=f"{detail} ({o.number})", order_last_event_at=o.last_event_at,
                  checked_at=timezone.now())
        for o in orders
    )
    return orders


def test_flags_page_lists_open_flags_with_links_and_hides_moved_sagas(client_as):
    stalled, moved = flagged_orders(2)
    # The saga moved since it was flagged: the page stops showing it before the next sweep.
    type(moved).objects.filter(pk=moved.pk).update(last_event_at=timezone.now())
    SweepRun.objects.create(started_at=timezone.now(), finished_at=timezone.now(), candidates=2, described=2)

    response = client_as("viewer").get(FLAGS_URL)
    html = response.content.decode()
    assert response.status_code == 200
    assert f'href="{reverse("orders:detail", args=[stalled.pk])}"' in html
    assert f"No worker polling the payments queue ({stalled.number})" in html
    assert moved.number not in html
    assert "1 flagged saga." in html and "2 described in Temporal" in html
    assert 'hx-trigger="every 15s"' in html
    assert "Sweep now" not in html  # viewers look; operators may sweep


def test_flags_page_says_when_nothing_is_flagged_and_the_sweeper_never_ran(client_as):
    html = client_as("viewer").get(FLAGS_URL).content.decode()
    assert "No stalled sagas" in html
    assert "The sweeper has not run yet" in html


def test_flags_partial_over_htmx(client_as):
    flagged_orders(1)
    response = client_as("viewer").get(FLAGS_URL, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="stall-flags-table"') and "<html" not in html


def test_sweep_now_queues_a_sweep_for_operators_only(client_as, monkeypatch):
    from ops import tasks

    queued = []
    monkeypatch.setattr(tasks.stalled_saga_sweep, "delay", lambda: queued.append(True))
    assert client_as("viewer").post(reverse("background:sweep_now")).status_code == 403
    operator = client_as("operator")
    assert "Sweep now" in operator.get(FLAGS_URL).content.decode()
    response = operator.post(reverse("background:sweep_now"))
    assert response.status_code == 302 and response.url == FLAGS_URL
    assert queued == [True]


def test_anonymous_users_are_sent_to_sign_in():
    response = Client().get(FLAGS_URL)
    assert response.status_code == 302 and response.url.startswith(reverse("login"))


def test_flags_page_and_card_queries_do_not_grow_with_flags(client_as):
    viewer = client_as("viewer")
    card = Template("{% load ops_background %}{% stall_flags_card %}")

    def costs(count: int) -> tuple[int, int]:
        flagged_orders(count)
        with CaptureQueriesContext(connection) as page:
            assert viewer.get(FLAGS_URL).status_code == 200
        with CaptureQueriesContext(connection) as card_queries:
            card.render(Context({}))
        return len(page), len(card_queries)

    assert costs(2) == costs(30)


def test_card_shows_the_first_flags_and_links_to_all(settings):
    settings.SWEEPER_DASHBOARD_FLAGS = 3
    orders = flagged_orders(5)
    html = Template("{% load ops_background %}{% stall_flags_card %}").render(Context({}))
    assert 'ws-connect="/ws/ops/background/flags/"' in html
    assert '<section id="stall-flags"' in html and "hx-swap-oob" not in html
    assert 'data-count="flags">5<' in html
    assert html.count('class="badge bad"') == 3
    assert "All 5 flagged sagas" in html
    assert orders[0].number in html and orders[4].number not in html  # oldest first


# --- the card's socket -------------------------------------------------------------------------


flags_application = AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter([
    path("ws/ops/background/flags/", StallFlagsConsumer.as_asgi()),
])))


def session_cookie_for(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


async def connect(user=None) -> WebsocketCommunicator:
    headers = [(b"origin", b"http://testserver"), (b"host", b"testserver")]
    if user is not None:
        headers.append((b"cookie", f"sessionid={await sync_to_async(session_cookie_for)(user)}".encode()))
    communicator = WebsocketCommunicator(flags_application, "/ws/ops/background/flags/", headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    return communicator


async def receive_until(communicator, predicate, timeout: float = 10) -> str:
    # Other test runs may share this Redis and publish to the same groups: wait for ours.
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, "expected message never arrived"
        html = await communicator.receive_from(timeout=remaining)
        if predicate(html):
            return html


async def test_socket_refuses_visitors_without_staff_permission():
    communicator = await connect()
    assert await communicator.receive_output(timeout=5) == {"type": "websocket.close", "code": 4403}


async def test_socket_sends_the_card_on_connect_and_after_each_sweep(staff_user):
    viewer = await sync_to_async(staff_user)("viewer")
    first_order, = await sync_to_async(flagged_orders)(1)
    communicator = await connect(viewer)
    try:
        html = await communicator.receive_from(timeout=5)
        assert '<section id="stall-flags" class="card stall-flags" aria-labelledby="stall-flags-heading" hx-swap-oob="true">' in html
        assert first_order.number in html

        second_order, = await sync_to_async(flagged_orders)(1, kind=StallFlag.Kind.TERMINATED,
                                                             detail="Workflow terminated outside the app")
        await sync_to_async(SweepRun.objects.create)(started_at=timezone.now(), finished_at=timezone.now())
        await sync_to_async(stall_flags_broadcast)()
        html = await receive_until(communicator, lambda h: second_order.number in h)
        assert "terminated outside the app" in html and first_order.number in html
        assert "Sweeper last ran" in html
    finally:
        await communicator.disconnect()


async def test_a_flagged_saga_that_moves_drops_off_the_card_at_once(staff_user):
    viewer = await sync_to_async(staff_user)("viewer")
    moving, staying = await sync_to_async(flagged_orders)(2)
    communicator = await connect(viewer)
    try:
        html = await communicator.receive_from(timeout=5)
        assert moving.number in html and staying.number in html

        def record():
            with transaction.atomic():
                saga_event_record(lock_order(moving.pk), kind="started", step="charge")

        await sync_to_async(record)()
        html = await receive_until(communicator, lambda h: moving.number not in h and 'id="stall-flags"' in h)
        assert staying.number in html and 'data-count="flags">1<' in html
    finally:
        await communicator.disconnect()


# --- Celery wiring ------------------------------------------------------------------------------


def test_beat_schedule_names_registered_tasks():
    celery_app.loader.import_default_modules()
    for name, entry in settings.CELERY_BEAT_SCHEDULE.items():
        assert entry["task"] in celery_app.tasks, name
    sweeper = settings.CELERY_BEAT_SCHEDULE["stalled-saga-sweeper"]
    assert sweeper["schedule"] == settings.SWEEPER_INTERVAL_SECONDS == 60
    assert sweeper["options"]["expires"] < sweeper["schedule"]
    nightly = settings.CELERY_BEAT_SCHEDULE["nightly-reconciliation"]["schedule"]
    assert nightly.hour == {settings.RECONCILIATION_HOUR_UTC} and nightly.minute == {15}


def test_order_flag_tag_shows_the_finding_until_the_saga_moves():
    order, = flagged_orders(1, kind=StallFlag.Kind.TERMINATED, detail="Workflow terminated outside the app")
    tag = Template("{% load ops_background %}{% order_stall_flag order %}")
    with CaptureQueriesContext(connection) as queries:
        html = tag.render(Context({"order": order}))
    assert len(queries) == 1
    assert "Saga stalled: terminated outside the app." in html and f"({order.number})" in html
    type(order).objects.filter(pk=order.pk).update(last_event_at=timezone.now())
    assert "Saga stalled" not in tag.render(Context({"order": order}))
