"""After shipping, on a real dev server: the tracker's deadline and its follow-ups, staff
marking a parcel delivered or reporting it lost (audit rows), the carrier's failed
delivery, and the customer's shipped and delivered emails, each once. Every tracker ends."""

import asyncio

import pytest
from asgiref.sync import sync_to_async
from django.core import mail
from django.core.exceptions import PermissionDenied
from django.test import Client
from django.urls import reverse

from ops.roles import VIEWER, staff_user_create
from ops.services import ActionNotAllowed, delivery_mark_delivered, delivery_report_lost, followup_resolve
from orders.models import FollowUp, NotificationAttempt, OperatorAction, Return, SagaEvent, Shipment
from orders.saga.shared import delivery_workflow_id
from orders.services.carrier_events import carrier_signature_header
from orders.status import OrderStatus

from .conftest import order_state, wait_for
from .factories import AMSTERDAM, make_order

pytestmark = pytest.mark.django_db(transaction=True)

ONE_SECOND_IN_DAYS = 1 / 86400


async def completed_order(saga_env):
    order = await sync_to_async(make_order)(shipping_address=AMSTERDAM)
    assert await saga_env.result(order) == "completed"
    return order, saga_env.client.get_workflow_handle(delivery_workflow_id(order.workflow_id))


def gateway_refunds(order) -> list:
    """Refunds the sandbox gateway holds under the order's keys, read in SQL."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT amount FROM sandbox_sandboxpaymentrecord WHERE kind = 'refund' "
                       "AND idempotency_key LIKE %s ORDER BY id", [f"{order.workflow_id}:%"])
        return [row[0] for row in cursor.fetchall()]


def open_followups(order_id: int) -> list[str]:
    return sorted(FollowUp.objects.filter(order_id=order_id, state="open").values_list("kind", flat=True))


def emails(order, outcome: str) -> int:
    """Emails of one outcome for the order: our ledger and the outbox must agree."""
    sent = NotificationAttempt.objects.filter(order=order, succeeded=True, idempotency_key__endswith=f":{outcome}").count()
    word = {"shipped": "has shipped", "delivered": "has been delivered"}[outcome]
    assert sum(word in m.subject and order.number in m.subject for m in mail.outbox) == sent
    return sent


async def test_overdue_opens_a_followup_then_staff_mark_delivered(saga_env, operator_user, settings):
    settings.DELIVERY_DEADLINE_DAYS = ONE_SECOND_IN_DAYS
    order, tracker = await completed_order(saga_env)
    await wait_for(lambda: open_followups(order.pk) == ["delivery_overdue"], message="overdue follow-up")
    followup = await sync_to_async(FollowUp.objects.get)(order=order, kind="delivery_overdue")
    assert "deadline" in followup.reason
    # It is on the follow-up queue staff work.
    staff = Client()
    await sync_to_async(staff.force_login)(operator_user)
    queue = await sync_to_async(staff.get)(reverse("ops:followups"))
    assert order.number in queue.content.decode()

    audit = await sync_to_async(delivery_mark_delivered)(order_id=order.pk, actor=operator_user,
                                                         reason="customer phoned: it arrived")
    assert await asyncio.wait_for(tracker.result(), 30) == "delivered"
    audit = await sync_to_async(OperatorAction.objects.get)(pk=audit.pk)
    assert (audit.action, audit.outcome, audit.actor_id) == ("mark_delivered", "applied", operator_user.pk)
    assert audit.reason == "customer phoned: it arrived"
    state = await sync_to_async(order_state)(order.pk)
    assert state.status == OrderStatus.DELIVERED
    assert await sync_to_async(open_followups)(order.pk) == []
    finished = await sync_to_async(SagaEvent.objects.get)(order=order, kind="finished", step="ship")
    assert finished.operator_action_id == audit.pk and finished.detail == "Delivered (reported by staff)"
    await wait_for(lambda: emails(order, "delivered") == 1, message="delivered email")
    assert await sync_to_async(emails)(order, "shipped") == 1

    # Tracking is over: a second decision is refused before it is recorded.
    with pytest.raises(ActionNotAllowed):
        await sync_to_async(delivery_report_lost)(order_id=order.pk, actor=operator_user, remedy="refund")
    assert await sync_to_async(OperatorAction.objects.filter(order=order).count)() == 1


async def test_report_lost_refund_ends_tracking_and_owes_a_refund(saga_env, operator_user):
    order, tracker = await completed_order(saga_env)
    viewer = await sync_to_async(staff_user_create)(username="viewer-lost", password="viewer-pass-123", role=VIEWER)
    with pytest.raises(PermissionDenied):
        await sync_to_async(delivery_report_lost)(order_id=order.pk, actor=viewer, remedy="refund")
    with pytest.raises(ActionNotAllowed):
        await sync_to_async(delivery_report_lost)(order_id=order.pk, actor=operator_user, remedy="shrug")
    assert not await sync_to_async(OperatorAction.objects.exists)()

    # The order page offers the delivery actions to an operator.
    staff = Client()
    await sync_to_async(staff.force_login)(operator_user)
    page = (await sync_to_async(staff.get)(reverse("orders:detail", args=[order.pk]))).content.decode()
    assert "Mark delivered" in page and "Report lost: refund" in page and "Report lost: re-ship" in page

    audit = await sync_to_async(delivery_report_lost)(order_id=order.pk, actor=operator_user, remedy="refund",
                                                      reason="carrier says lost in depot")
    assert await asyncio.wait_for(tracker.result(), 30) == "lost_refund"
    audit = await sync_to_async(OperatorAction.objects.get)(pk=audit.pk)
    assert (audit.action, audit.outcome) == ("lost_refund", "applied")
    shipment = await sync_to_async(Shipment.objects.get)(order=order)
    assert shipment.state == Shipment.State.LOST and shipment.tracking_ended_at is not None
    state = await sync_to_async(order_state)(order.pk)
    assert state.status == OrderStatus.COMPLETED  # not delivered
    assert await sync_to_async(emails)(order, "delivered") == 0

    # The customer gets the whole charge back through the refund saga (its own gateway key),
    # started with the tracking's end: the money is checked in the gateway's books, not a flag.
    refund = await sync_to_async(Return.objects.get)(order=order)
    assert (refund.kind, refund.amount) == (Return.Kind.GOODWILL, order.total)
    result = await asyncio.wait_for(saga_env.client.get_workflow_handle(refund.workflow_id).result(), 60)
    assert result == "refunded"
    assert await sync_to_async(gateway_refunds)(order) == [order.total]
    await sync_to_async(order.refresh_from_db)()
    assert (order.refunded_total, order.refund_pending_total) == (order.charged_total, 0)
    assert await sync_to_async(open_followups)(order.pk) == []  # nothing left for staff to do

    # Reported lost twice (a second click, another operator): refused, no second refund.
    with pytest.raises(ActionNotAllowed):
        await sync_to_async(delivery_report_lost)(order_id=order.pk, actor=operator_user, remedy="refund")
    assert await sync_to_async(Return.objects.filter(order=order).count)() == 1


async def test_report_lost_reship_opens_a_reship_followup(saga_env, operator_user):
    order, tracker = await completed_order(saga_env)
    await sync_to_async(delivery_report_lost)(order_id=order.pk, actor=operator_user, remedy="reship")
    assert await asyncio.wait_for(tracker.result(), 30) == "lost_reship"
    assert await sync_to_async(open_followups)(order.pk) == ["reship_due"]


async def test_failed_delivery_opens_a_followup_and_delivery_closes_it(saga_env, operator_user):
    order, tracker = await completed_order(saga_env)
    tracking = await sync_to_async(lambda: Shipment.objects.get(order=order).tracking_number)()

    def carrier_says(event: str, event_id: str) -> int:
        body = (f'{{"event_id": "{event_id}", "tracking_number": "{tracking}", "event": "{event}", '
                f'"occurred_at": "2026-12-03T09:00:00+01:00"}}').encode()
        return Client().post("/webhooks/carrier/", data=body, content_type="application/json",
                             HTTP_X_CARRIER_SIGNATURE=carrier_signature_header(body=body)).status_code

    assert await sync_to_async(carrier_says)("delivery_failed", "evt_f1") == 200
    await wait_for(lambda: open_followups(order.pk) == ["delivery_failed"], message="failed-delivery follow-up")
    assert await sync_to_async(carrier_says)("delivered", "evt_ok") == 200
    assert await asyncio.wait_for(tracker.result(), 30) == "delivered"
    assert await sync_to_async(open_followups)(order.pk) == []
    followup = await sync_to_async(FollowUp.objects.get)(order=order, kind="delivery_failed")
    assert followup.resolution == "delivered"
    # Staff and the customer see what the carrier said.
    staff = Client()
    await sync_to_async(staff.force_login)(operator_user)
    page = (await sync_to_async(staff.get)(reverse("orders:detail", args=[order.pk]))).content.decode()
    assert "Carrier: delivery failed" in page and "Delivered (reported by carrier webhook)" in page
    customer = await sync_to_async(Client().get)(reverse("customer:status", args=[order.public_token]))
    assert customer.status_code == 200 and "Delivered" in customer.content.decode()
    assert tracking in customer.content.decode()


async def test_nobody_decides_so_the_tracker_gives_up(saga_env, operator_user, settings):
    settings.DELIVERY_DEADLINE_DAYS = ONE_SECOND_IN_DAYS
    settings.DELIVERY_GIVE_UP_DAYS = 2 * ONE_SECOND_IN_DAYS
    order, tracker = await completed_order(saga_env)
    assert await asyncio.wait_for(tracker.result(), 30) == "given_up"
    # The overdue follow-up stays for staff; the delivery actions no longer fit.
    assert await sync_to_async(open_followups)(order.pk) == ["delivery_overdue"]
    with pytest.raises(ActionNotAllowed, match="no longer tracked"):
        await sync_to_async(delivery_mark_delivered)(order_id=order.pk, actor=operator_user)
    resolved = await sync_to_async(followup_resolve)(order_id=order.pk, actor=operator_user, reason="called")
    assert resolved.outcome == "applied" and await sync_to_async(open_followups)(order.pk) == []


async def test_a_tracker_left_running_for_a_closed_order_is_caught(saga_env):
    """The invariant and reconciliation both see a tracker running for a delivered order."""
    from datetime import timedelta

    from django.utils import timezone

    from ops.reconciliation_checks import Findings, _check_workflows
    from orders.services.shipping import shipment_mark_delivered

    from .invariants import assert_no_open_tracker_for_closed_order

    order, tracker = await completed_order(saga_env)
    await assert_no_open_tracker_for_closed_order(saga_env.client)  # open delivery, running tracker: fine
    # Delivered behind the tracker's back (as a bug would): it keeps running.
    await sync_to_async(shipment_mark_delivered)(order_id=order.pk, source="a bug")
    with pytest.raises(AssertionError, match="still running for closed orders"):
        await assert_no_open_tracker_for_closed_order(saga_env.client)
    found = Findings(run=None, max_per_kind=10)
    await sync_to_async(_check_workflows)(found, {tracker.id: "DeliveryTracking"}, timezone.now() + timedelta(hours=1))
    assert [d.kind for d in found.rows] == ["orphan_workflow"]
    assert "is still running although" in found.rows[0].detail and order.number in found.rows[0].detail
    await tracker.terminate("test over")
