"""Customer emails outside a step survive our own database refusing connections through
all of their activity's attempts: the workflow runs the email again (an undone order's
outcome email, a return's refund email, the delivery tracker's shipped email), and the
mailer's book holds each one once.

The fault suite's CI run found the gap: a 4 s database outage used up the three attempts
(1 s and 2 s apart) of a failed order's outcome email, and its customer was never told.
Each path's history replays, and is recorded with RECORD_HISTORIES (tests/test_replay.py).
"""

import asyncio
import threading

import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError
from temporalio import activity

from orders.models import NotificationAttempt, Order, SagaEvent
from orders.saga import activities, return_activities
from orders.saga.delivery_tracker import DeliveryTrackingWorkflow
from orders.saga.shared import (
    DeliveredSignal,
    DeliveryNotice,
    OutcomeNotice,
    ReturnStepInput,
    delivery_workflow_id,
)
from orders.services.returns import refund_open
from orders.services.saga import saga_input_for
from sandbox.models import SandboxEmail

from .conftest import order_state, wait_for
from .factories import make_order
from .replaying import replays

# (activity name, return or order id) -> attempts still to meet the outage.
DATABASE_DOWN: dict[tuple[str, int], int] = {}
_lock = threading.Lock()


def _outage_met(name: str, pk: int) -> bool:
    with _lock:
        if DATABASE_DOWN.get((name, pk), 0) > 0:
            DATABASE_DOWN[(name, pk)] -= 1
            return True
    return False


def _refusing(*_args) -> str:
    raise OperationalError("connection failed: FATAL: the database system is not accepting connections")


@activity.defn(name="notify_outcome")
def _notify_outcome(notice: OutcomeNotice) -> str:
    if _outage_met("notify_outcome", notice.order_id):
        return activities._email_sent(_refusing)  # through its own error handling
    return activities.notify_outcome(notice)


@activity.defn(name="return_notify")
def _return_notify(inp: ReturnStepInput) -> str:
    if _outage_met("return_notify", inp.return_id):
        return return_activities._recorded(inp, _refusing)  # through its own error handling
    return return_activities.return_notify(inp)


@activity.defn(name="notify_delivery")
def _notify_delivery(notice: DeliveryNotice) -> str:
    if _outage_met("notify_delivery", notice.order_id):
        return activities._email_sent(_refusing)
    return activities.notify_delivery(notice)


pytestmark = [pytest.mark.django_db(transaction=True),
              pytest.mark.activity_overrides(notify_outcome=_notify_outcome, return_notify=_return_notify,
                                             notify_delivery=_notify_delivery)]


@pytest.fixture(autouse=True)
def _clear_outages():
    yield
    DATABASE_DOWN.clear()


def sent(message_id: str) -> list[str]:
    return list(SandboxEmail.objects.filter(message_id=message_id).values_list("subject", flat=True))


async def test_an_outcome_email_through_an_outage_tells_the_customer_once(saga_env):
    order = await sync_to_async(make_order)(fault_plan={"shipping": "fail"}, start_saga=False)
    DATABASE_DOWN[("notify_outcome", order.pk)] = 4  # the three attempts of the first run, and one more
    await saga_env.client.start_workflow("OrderSaga", saga_input_for(order), id=order.workflow_id,
                                         task_queue=saga_env.orders_queue)
    assert await saga_env.result(order) == "compensated"
    assert (await sync_to_async(order_state)(order.pk)).status == "failed"
    assert DATABASE_DOWN[("notify_outcome", order.pk)] == 0  # the outage really was met, four times
    assert await sync_to_async(sent)(f"{order.workflow_id}:notify:failed") == [
        f"We couldn't complete your order {order.number}"]
    # Our outage is not the mailer's failure: no failed attempt in the ledger.
    assert not await sync_to_async(NotificationAttempt.objects.filter(order=order, succeeded=False).exists)()
    await replays(saga_env.handle(order), "outcome_email_rerun")


async def test_a_refund_email_through_an_outage_is_sent_once(saga_env, operator_user):
    order = await sync_to_async(make_order)()
    assert await saga_env.result(order) == "completed"
    order = await sync_to_async(Order.objects.get)(pk=order.pk)
    # The return's id is known only once it exists; its saga starts on commit, and the
    # refund comes before the email, so arming the outage right after is in time.
    ret = await sync_to_async(refund_open)(order_id=order.pk, amount="1.00", reason="Late", actor=operator_user)
    DATABASE_DOWN[("return_notify", ret.pk)] = 4  # the three attempts of the first run, and one more
    result = await asyncio.wait_for(saga_env.client.get_workflow_handle(ret.workflow_id).result(), 60)
    assert result == "refunded"
    assert DATABASE_DOWN[("return_notify", ret.pk)] == 0  # the outage really was met, four times
    assert await sync_to_async(sent)(f"{ret.workflow_id}:notify:refunded") == [
        f"Your refund for order {order.number}"]
    # Our outage is not the mailer's failure: no failed email on the order's timeline.
    assert not await sync_to_async(SagaEvent.objects.filter(order=order, step="return_notify", kind="failed").exists)()
    await replays(saga_env.client.get_workflow_handle(ret.workflow_id), "return_email_rerun")


async def test_a_shipped_email_through_an_outage_is_sent_once(saga_env):
    order = await sync_to_async(make_order)(start_saga=False)
    DATABASE_DOWN[("notify_delivery", order.pk)] = 6  # the tracker's five attempts (15 s), and one more
    await saga_env.client.start_workflow("OrderSaga", saga_input_for(order), id=order.workflow_id,
                                         task_queue=saga_env.orders_queue)
    assert await saga_env.result(order) == "completed"
    shipped = f"{order.workflow_id}:notify:shipped"
    await wait_for(lambda: sent(shipped), timeout=60, message="the shipped email")
    assert DATABASE_DOWN[("notify_delivery", order.pk)] == 0
    assert await sync_to_async(sent)(shipped) == [f"Your order {order.number} has shipped"]
    tracker = saga_env.client.get_workflow_handle(delivery_workflow_id(order.workflow_id))
    await tracker.signal(DeliveryTrackingWorkflow.delivered, DeliveredSignal(source="staff"))
    assert await asyncio.wait_for(tracker.result(), 60) == "delivered"
    await replays(tracker, "tracker_email_rerun")
