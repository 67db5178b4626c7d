"""Detail frames built from an event's message (ops/order_pages/consumers.py) rather than read.

A step's ordinary event (started, retrying, failed...) is folded into the timeline the
process kept for the order, from the event's broadcast, when that timeline is the one just
before the event (the message names the previous event, Order.last_event_id). The frame
must then be the very HTML a read would have rendered, with no query; anything else reads.
"""

import json
from contextlib import contextmanager
from datetime import timedelta
from unittest import mock

import pytest
from asgiref.sync import sync_to_async
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from ops import metrics as ops_metrics
from ops.order_pages import consumers
from orders.live import reader_connection_close
from orders.locks import lock_order
from orders.models import Order, SagaEvent
from orders.selectors.timeline import TimelineEvent, saga_timeline_build, saga_timeline_fold
from orders.services import events as event_services
from orders.services.events import order_saga_state_set, saga_event_record

from .factories import make_order
from .websockets import open_socket, receive_until

RUNNING = {"status": "processing", "saga_status": "running"}
# Queries of a ledger section read on its own (orders.selectors.ledger): the follow-ups come
# with the notifications.
LEDGER_QUERIES = {"stock": 1, "payments": 1, "shipment": 1, "notify": 2}

# A saga with retries, a stuck step resumed, a follow-up and its resend, and the finish:
# (step, kind, detail, attempt, order state set with the event, built from the message?).
# Folded: a forward step's progress after an event this process saw (a step's effect then
# reads its ledger section alone). Read: an order's first event, an event whose frame shows
# the audit list or the buttons, the saga becoming stuck or finishing.
BUSY_SAGA = [
    ("validate", "started", "", 1, {**RUNNING, "current_step": "validate"}, False),  # the first event
    ("validate", "succeeded", "2 line(s), total 49.90 EUR", 1, {}, True),
    ("reserve", "started", "", 1, {"current_step": "reserve"}, True),
    ("reserve", "succeeded", "Reserved 1 x Mug", 1, {}, True),  # and the stock ledger read alone
    ("charge", "started", "", 1, {"current_step": "charge"}, True),
    ("charge", "failed", "payment unavailable: timed out", 1, {"last_error": "payment unavailable: timed out"}, True),
    ("charge", "retrying", "", 2, {}, True),
    ("charge", "failed", "payment unavailable: refused", 2, {"last_error": "payment unavailable: refused"}, True),
    ("charge", "stuck", "payment unavailable (gave up after 2 attempts)", 1,
     {"saga_status": "stuck", "last_error": "payment unavailable (gave up)"}, False),  # stuck now
    # Resumed without a signal of its own (an automatic decision): stuck -> running.
    ("charge", "retrying", "", 1, {"saga_status": "running"}, True),
    ("charge", "succeeded", "Charged 49.90 EUR", 1, {}, True),  # and the payments ledger
    ("confirm", "started", "", 1, {"current_step": "confirm"}, True),
    ("confirm", "succeeded", "Sold 2 item(s)", 1, {}, True),
    ("ship", "started", "", 1, {"current_step": "ship"}, True),
    ("ship", "failed", "carrier unavailable", 1, {"last_error": "carrier unavailable"}, True),
    ("ship", "retrying", "resuming after parcel 1", 2, {}, True),
    ("ship", "succeeded", "Booked 2 parcel(s)", 2, {}, True),
    ("notify", "started", "", 1, {"current_step": "notify"}, True),
    ("notify", "failed", "mailer refused", 1, {"last_error": "mailer refused"}, True),  # and the notify ledger
    ("notify", "followup", "Could not notify the customer", 1, {"saga_status": "needs_followup"}, False),
    ("notify", "signal", "resend requested (action #0): test", 1, {"saga_status": "running"}, False),
    ("notify", "retrying", "", 2, {}, True),
    ("notify", "succeeded", "Emailed ada@example.com", 2, {}, True),
    ("", "finished", "Order completed", 1, {"status": "completed", "saga_status": "completed"}, False),
]

# A saga rolling back: once a compensation is on the timeline, every event is read.
ROLLBACK = [
    ("validate", "started", "", 1, {**RUNNING, "current_step": "validate"}, False),
    ("validate", "succeeded", "ok", 1, {}, True),
    ("reserve", "started", "", 1, {"current_step": "reserve"}, True),
    ("reserve", "succeeded", "Reserved", 1, {}, True),
    ("charge", "started", "", 1, {"current_step": "charge"}, True),
    ("charge", "failed", "card declined", 1, {"last_error": "card declined"}, True),
    ("reserve", "compensating", "", 1, {"saga_status": "compensating"}, False),
    ("reserve", "compensated", "Released", 1, {}, False),
    ("charge", "failed", "card declined again", 2, {}, False),  # a forward step, but after an undo
    ("", "finished", "Payment declined", 1, {"status": "failed", "saga_status": "compensated"}, False),
]


@contextmanager
def published_messages():
    """The saga.event messages saga_event_record broadcasts, as a socket gets them (through
    JSON, as through the channel layer), in order; nothing reaches Redis. Taken when
    published, not after commit: these tests run in one transaction, and render in it."""
    messages: list[dict] = []

    def publish_on_commit(groups, message):
        messages.append(json.loads(json.dumps(message)))

    with mock.patch.object(event_services, "publish_on_commit", publish_on_commit):
        yield messages


def record(order_id: int, step: str, kind: str, detail: str, attempt: int, state: dict) -> None:
    """One saga event as an activity records it: the order locked, its state and the event."""
    with transaction.atomic():
        order = lock_order(order_id)
        if state:
            order_saga_state_set(order, **state)
        saga_event_record(order, kind=kind, step=step, detail=detail, attempt=attempt)


def order_with_a_page_at_its_first_event() -> Order:
    """An order whose saga has started, with a page whose process rendered that first event."""
    order = make_order(start_saga=False)
    with published_messages() as messages:
        record(order.pk, "validate", "started", "", 1, {**RUNNING, "current_step": "validate"})
    consumers.render_detail_frame(order.pk, messages[0]["event"]["id"], "started", "validate", messages[0])
    return order


@contextmanager
def process_state_kept():
    """Render, then put the process's kept timelines and rendered states back as they were."""
    kept = (dict(consumers._timelines), dict(consumers._rendered_from))
    try:
        yield
    finally:
        for live, saved in zip((consumers._timelines, consumers._rendered_from), kept):
            live.clear()
            live.update(saved)


def frame_of(rendered):
    html, order, buttons = rendered
    return html, (order.status, order.saga_status, order.current_step, order.last_error, order.stuck_since,
                  order.last_event_at, order.last_event_id), buttons


@pytest.fixture(autouse=True)
def _fresh_process_state():
    for kept in (consumers._timelines, consumers._rendered_from):
        kept.clear()
    yield


@pytest.mark.django_db
@pytest.mark.parametrize("saga", [BUSY_SAGA, ROLLBACK], ids=["busy", "rollback"])
def test_a_frame_built_from_the_message_is_the_frame_a_read_renders(saga):
    order = make_order(start_saga=False)
    # A page open on the order from the start: its first frame read the timeline.
    consumers.render_detail_frame(order.pk)
    folded = []
    for step, kind, detail, attempt, state, _ in saga:
        with published_messages() as messages:
            record(order.pk, step, kind, detail, attempt, state)
        message = messages[-1]
        event = message["event"]
        with process_state_kept():
            read = consumers.render_detail_frame(order.pk, event["id"], kind, step)
        built = ops_metrics.LIVE_DETAIL_FRAMES.labels("message")._value.get()
        with CaptureQueriesContext(connection) as queries:
            from_message = consumers.render_detail_frame(order.pk, event["id"], kind, step, message)
        assert frame_of(from_message) == frame_of(read), (step, kind)
        was_folded = ops_metrics.LIVE_DETAIL_FRAMES.labels("message")._value.get() == built + 1
        folded.append(was_folded)
        if was_folded:
            # No read of the order or its events: only the ledger section the step moved.
            plan = consumers.frame_plan(kind, step)
            ledger_queries = sum(LEDGER_QUERIES[section] for section in plan.ledger)
            assert len(queries) == ledger_queries, (step, kind, [q["sql"] for q in queries.captured_queries])
    assert folded == [expected for *_, expected in saga]


@pytest.mark.django_db
def test_a_step_event_costs_no_query_and_one_not_following_the_kept_timeline_is_read():
    order = make_order(start_saga=False)
    with published_messages() as messages:
        record(order.pk, "validate", "started", "", 1, {**RUNNING, "current_step": "validate"})
        consumers.render_detail_frame(order.pk, messages[0]["event"]["id"], "started", "validate", messages[0])
        record(order.pk, "validate", "succeeded", "ok", 1, {})
    first, second = messages
    # The chain: each message names the event before it, which the order keeps.
    assert first["previous_event_id"] is None
    assert second["previous_event_id"] == first["event"]["id"]
    assert Order.objects.get(pk=order.pk).last_event_id == second["event"]["id"]

    message_frames = ops_metrics.LIVE_DETAIL_FRAMES.labels("message")._value.get()
    read_frames = ops_metrics.LIVE_DETAIL_FRAMES.labels("read")._value.get()
    with CaptureQueriesContext(connection) as queries:
        html, _, _ = consumers.render_detail_frame(order.pk, second["event"]["id"], "succeeded", "validate", second)
    assert len(queries) == 0
    assert f'id="saga-{order.pk}-step-validate-head" class="step-summary state-succeeded"' in html
    assert "2 events recorded" in html
    assert ops_metrics.LIVE_DETAIL_FRAMES.labels("message")._value.get() == message_frames + 1

    # A message that names another previous event than the kept timeline's newest is read.
    with published_messages() as messages:
        record(order.pk, "reserve", "started", "", 1, {"current_step": "reserve"})
    third = {**messages[0], "previous_event_id": first["event"]["id"]}
    with CaptureQueriesContext(connection) as queries:
        html, _, _ = consumers.render_detail_frame(order.pk, third["event"]["id"], "started", "reserve", third)
    assert len(queries) == 2  # the order and its events
    assert f'id="saga-{order.pk}-step-reserve-head" class="step-summary state-running"' in html
    assert ops_metrics.LIVE_DETAIL_FRAMES.labels("read")._value.get() == read_frames + 1


@pytest.mark.django_db
def test_a_lost_message_makes_the_next_frame_read():
    order = order_with_a_page_at_its_first_event()
    with published_messages() as messages:
        record(order.pk, "validate", "failed", "lost on the way", 1, {})  # never reaches this process
        record(order.pk, "validate", "retrying", "", 2, {})
    message = messages[1]
    html, _, _ = consumers.render_detail_frame(order.pk, message["event"]["id"], "retrying", "validate", message)
    assert "3 events recorded" in html  # the lost one included
    assert f'id="saga-event-{messages[0]["event"]["id"]}"' in html


@pytest.mark.django_db
def test_a_frame_after_a_lost_message_mends_the_whole_page():
    """A worker killed between an event's commit and its publish: the page never gets that
    event's frame. The next event's message names it as the previous one, so its frame is
    the whole of the page's live parts, the lost event's step included, not that step alone."""
    order = order_with_a_page_at_its_first_event()
    with published_messages() as messages:
        record(order.pk, "validate", "succeeded", "lost with its worker", 1, {})  # never published
        record(order.pk, "reserve", "started", "", 1, {"current_step": "reserve"})
    lost, arrived = messages
    assert arrived["previous_event_id"] == lost["event"]["id"]
    html, _, buttons = consumers.render_detail_frame(order.pk, arrived["event"]["id"], "started", "reserve", arrived)
    assert f'id="saga-{order.pk}-step-validate-head" class="step-summary state-succeeded"' in html
    assert f'id="saga-event-{lost["event"]["id"]}"' in html and "lost with its worker" in html
    assert f'id="order-summary-{order.pk}"' in html and f'id="order-ledger-{order.pk}' in html
    assert buttons  # the whole page: the buttons are sent again too
    # Once mended, the chain holds again: the next step event folds.
    with published_messages() as messages:
        record(order.pk, "reserve", "failed", "no stock", 1, {"last_error": "no stock"})
    built = ops_metrics.LIVE_DETAIL_FRAMES.labels("message")._value.get()
    consumers.render_detail_frame(order.pk, messages[0]["event"]["id"], "failed", "reserve", messages[0])
    assert ops_metrics.LIVE_DETAIL_FRAMES.labels("message")._value.get() == built + 1


# --- the fold itself (orders.selectors.timeline) ----------------------------------------------


def _event(pk: int, step: str, kind: str, attempt: int = 1, detail: str = "", minutes: int = 0) -> SagaEvent:
    from django.utils import timezone

    at = timezone.now().replace(microsecond=0) + timedelta(minutes=minutes)
    return SagaEvent(pk=pk, step=step, kind=kind, attempt=attempt, detail=detail, created_at=at)


def _timeline_event(event: SagaEvent) -> TimelineEvent:
    return TimelineEvent(id=event.pk, step=event.step, kind=event.kind, detail=event.detail, attempt=event.attempt,
                         created_at=event.created_at)


@pytest.mark.parametrize("before, after, then", [
    ("stuck", "running", ("charge", "retrying", 1)),  # resumed: the step's wait is not its time
    ("stuck", "running", ("notify", "retrying", 2)),  # another step: the stuck one now reads failed
    ("stuck", "stuck", ("charge", "retrying", 4)),
    ("running", "running", ("charge", "failed", 3)),
    ("needs_followup", "running", ("notify", "retrying", 2)),
])
def test_folding_an_event_equals_building_with_it(before, after, then):
    events = [
        _event(1, "validate", "started"), _event(2, "validate", "succeeded"),
        _event(3, "charge", "started"), _event(4, "charge", "failed", detail="down"),
        _event(5, "charge", "retrying", 2), _event(6, "charge", "stuck", detail="gave up", minutes=1),
        _event(7, "notify", "failed", detail="mailer"), _event(8, "notify", "followup", detail="call them"),
    ]
    step, kind, attempt = then
    new = _event(9, step, kind, attempt, minutes=5)
    was, now = Order(pk=1, saga_status=before), Order(pk=1, saga_status=after)
    kept = saga_timeline_build(was, events)
    kept_copy = saga_timeline_build(was, events)
    folded = saga_timeline_fold(kept, now, _timeline_event(new))
    assert folded == saga_timeline_build(now, [*events, new])
    assert kept == kept_copy  # the kept timeline is not changed


@pytest.mark.parametrize("events, before, after, new", [
    # Becoming stuck: a step that reads failed may read stuck again.
    ([_event(1, "charge", "stuck")], "running", "stuck", _event(2, "ship", "started")),
    ([_event(1, "charge", "started")], "running", "completed", _event(2, "charge", "succeeded")),  # finished
    ([_event(1, "charge", "compensating")], "compensating", "compensating", _event(2, "ship", "failed")),
    ([_event(1, "charge", "started")], "running", "running", _event(2, "charge", "compensating")),
    ([_event(1, "charge", "started")], "running", "running", _event(2, "", "failed")),  # the saga's own
    ([_event(1, "notify", "followup")], "needs_followup", "running", _event(2, "notify", "signal")),
    ([_event(2, "charge", "started")], "running", "running", _event(2, "charge", "failed")),  # not newer
])
def test_what_a_fold_leaves_to_the_build(events, before, after, new):
    kept = saga_timeline_build(Order(pk=1, saga_status=before), events)
    assert saga_timeline_fold(kept, Order(pk=1, saga_status=after), _timeline_event(new)) is None


# --- through the socket -----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_the_detail_socket_builds_a_step_event_frame_from_its_message(staff_user):
    try:
        viewer = await sync_to_async(staff_user)("viewer")
        order = await sync_to_async(make_order)(start_saga=False)
        await sync_to_async(record)(order.pk, "validate", "started", "", 1, {**RUNNING, "current_step": "validate"})
        communicator = await open_socket(f"/ws/orders/{order.pk}/", viewer)
        await communicator.receive_from(timeout=5)  # the first frame reads the timeline
        built = ops_metrics.LIVE_DETAIL_FRAMES.labels("message")._value.get()
        await sync_to_async(record)(order.pk, "validate", "failed", "a unique failure 7f3a", 1, {})
        frame = await receive_until(communicator, "a unique failure 7f3a")
        assert f'id="saga-{order.pk}-step-validate-head" class="step-summary state-failed"' in frame
        assert ops_metrics.LIVE_DETAIL_FRAMES.labels("message")._value.get() == built + 1
        await communicator.disconnect()
    finally:
        await sync_to_async(reader_connection_close)()


@pytest.mark.django_db
def test_a_step_effect_frame_reads_only_its_ledger_section_and_renders_what_a_read_does(django_user_model):
    """A step's effect (stock held, money taken, parcels booked, an email refused with its
    follow-up) folds into the kept timeline and reads its own ledger rows alone: the frame is
    the one a whole read renders, rows and all."""
    from decimal import Decimal

    from orders.models import FollowUp, NotificationAttempt, Payment, Reservation, Shipment

    order = make_order(start_saga=False)
    line = order.lines.select_related("product").first()
    staff = django_user_model.objects.create_user("ledger-reader", password="x")
    consumers.render_detail_frame(order.pk)  # a page open from the start

    def effect_then_event(step, kind, detail, write):
        write()
        with published_messages() as messages:
            record(order.pk, step, kind, detail, 1, {"current_step": step, **RUNNING})
        message = messages[-1]
        with process_state_kept():
            read = consumers.render_detail_frame(order.pk, message["event"]["id"], kind, step)
        built = ops_metrics.LIVE_DETAIL_FRAMES.labels("message")._value.get()
        with CaptureQueriesContext(connection) as queries:
            from_message = consumers.render_detail_frame(order.pk, message["event"]["id"], kind, step, message)
        assert ops_metrics.LIVE_DETAIL_FRAMES.labels("message")._value.get() == built + 1, (step, kind)
        assert frame_of(from_message) == frame_of(read), (step, kind)
        section = consumers.LEDGER_OF_STEP[step]
        assert len(queries) == LEDGER_QUERIES[section], [q["sql"] for q in queries.captured_queries]
        return from_message[0]

    with published_messages():
        record(order.pk, "validate", "started", "", 1, {**RUNNING, "current_step": "validate"})
    consumers.render_detail_frame(order.pk)  # the page reads once more: the chain starts here
    html = effect_then_event("reserve", "succeeded", "Reserved", lambda: Reservation.objects.create(
        order=order, product=line.product, quantity=line.quantity))
    assert line.product.name in html
    html = effect_then_event("charge", "succeeded", "Charged", lambda: Payment.objects.create(
        order=order, kind="charge", amount=Decimal("12.34"), currency="EUR", idempotency_key=f"{order.pk}:charge",
        gateway_reference="ref-ledger-1"))
    assert "ref-ledger-1" in html and "12.34" in html
    html = effect_then_event("ship", "succeeded", "Booked", lambda: Shipment.objects.create(
        order=order, state="booked", carrier_reference="TRACK-LEDGER-1", parcels_total=2, parcels_booked=2,
        idempotency_key=f"{order.pk}:ship"))
    assert "TRACK-LEDGER-1" in html

    def email_refused():
        NotificationAttempt.objects.create(order=order, succeeded=False, error="mailbox full (ledger test)")
        FollowUp.objects.create(order=order, reason="Could not notify", claimed_by=staff)

    html = effect_then_event("notify", "failed", "mailer refused", email_refused)
    assert "mailbox full (ledger test)" in html and "ledger-reader" in html
