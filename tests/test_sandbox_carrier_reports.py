"""The sandbox carrier reports its parcels' progress by itself, over the signed webhook
(the same HTTP path a real carrier uses), so a demo reaches "delivered" without anyone."""

import asyncio
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.test import Client
from django.utils import timezone

from orders.models import CarrierEvent, FollowUp
from orders.saga.shared import delivery_workflow_id
from orders.status import OrderStatus
from sandbox.carrier_reports import sandbox_carrier_report
from sandbox.models import SandboxCarrierReport

from .conftest import order_state, wait_for
from .factories import AMSTERDAM, make_order

pytestmark = pytest.mark.django_db(transaction=True)


def through_the_webhook(body: bytes, headers: dict[str, str]) -> int:
    """POST as urllib would, to the app's real URL and view (test client instead of a socket)."""
    extra = {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers.items()}
    return Client(enforce_csrf_checks=True).post("/webhooks/carrier/", data=body, content_type="application/json",
                                                 **extra).status_code


def report_at(seconds_after: float) -> int:
    return sandbox_carrier_report(post=through_the_webhook, now=timezone.now() + timedelta(seconds=seconds_after))


async def test_sandbox_carrier_delivers_by_itself(saga_env, settings):
    settings.SANDBOX_CARRIER_DELIVERY_SECONDS = 30
    order = await sync_to_async(make_order)(shipping_address=AMSTERDAM)
    assert await saga_env.result(order) == "completed"
    tracker = saga_env.client.get_workflow_handle(delivery_workflow_id(order.workflow_id))

    assert await sync_to_async(report_at)(0) == 0  # nothing due yet
    assert await sync_to_async(report_at)(11) == 1  # in transit
    assert await sync_to_async(report_at)(12) == 0  # reported once
    assert await sync_to_async(report_at)(31) == 2  # out for delivery, delivered
    assert await asyncio.wait_for(tracker.result(), 30) == "delivered"
    assert (await sync_to_async(order_state)(order.pk)).status == OrderStatus.DELIVERED
    events = await sync_to_async(lambda: list(CarrierEvent.objects.filter(order=order).values_list("event", flat=True)))()
    assert events == ["in_transit", "out_for_delivery", "delivered"]
    assert await sync_to_async(SandboxCarrierReport.objects.count)() == 3


async def test_parcel_lost_plan_goes_quiet_and_the_deadline_raises_it(saga_env, settings):
    settings.SANDBOX_CARRIER_DELIVERY_SECONDS = 30
    settings.DELIVERY_DEADLINE_DAYS = 2 / 86400
    order = await sync_to_async(make_order)(shipping_address=AMSTERDAM, fault_plan={"delivery": "lost"})
    assert await saga_env.result(order) == "completed"
    assert await sync_to_async(report_at)(31) == 1  # in transit, then nothing
    await wait_for(lambda: FollowUp.objects.filter(order=order, kind="delivery_overdue", state="open").exists(),
                   message="overdue follow-up")
    events = await sync_to_async(lambda: list(CarrierEvent.objects.filter(order=order).values_list("event", flat=True)))()
    assert events == ["in_transit"]


def test_switched_off_reports_nothing(db, settings):
    settings.SANDBOX_CARRIER_DELIVERY_SECONDS = 0
    assert sandbox_carrier_report(post=lambda body, headers: pytest.fail("posted")) == 0
