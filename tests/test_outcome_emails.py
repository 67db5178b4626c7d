"""The customer is told of every outcome of the order saga, each email once, in plain words:
confirmed (test_saga_paths), failed with what was refunded, cancelled."""

import pytest
from asgiref.sync import sync_to_async
from django.core import mail

from orders.models import NotificationAttempt, SagaEvent
from ops.services import order_cancel

from .conftest import order_state, wait_for
from .factories import make_order, make_product

pytestmark = pytest.mark.django_db(transaction=True)


def mails_for(order) -> list:
    return [m for m in mail.outbox if order.number in m.subject]


def sent_once(key: str) -> bool:
    return NotificationAttempt.objects.filter(idempotency_key=key, succeeded=True).count() == 1


async def test_declined_card_failed_email_says_nothing_was_charged(saga_env):
    order = await sync_to_async(make_order)(fault_plan={"payment": "decline"})
    assert await saga_env.result(order) == "compensated"
    [message] = mails_for(order)
    assert message.subject == f"We couldn't complete your order {order.number}"
    assert "You have not been charged." in message.body and "refunded" not in message.body
    assert await sync_to_async(sent_once)(f"{order.workflow_id}:notify:failed")
    # The timeline ends as before: the email is in the notification ledger, not a step.
    assert not await sync_to_async(SagaEvent.objects.filter(order=order, step="notify").exists)()


async def test_failure_after_the_charge_says_what_was_refunded(saga_env):
    product = await sync_to_async(make_product)(price="17.25")
    order = await sync_to_async(make_order)(products=[(product, 2)], fault_plan={"inventory": "fail"})
    assert await saga_env.result(order) == "compensated"
    [message] = mails_for(order)
    assert "We've refunded 34.50 EUR to the card you paid with." in message.body
    assert f"2 x {product.name}" in message.body


async def test_cancelled_order_is_told_once(saga_env, operator_user):
    order = await sync_to_async(make_order)(fault_plan={"latency_ms": 1500})
    await wait_for(lambda: order_state(order.pk).current_step == "charge", message="charging")
    await sync_to_async(order_cancel)(order_id=order.pk, actor=operator_user)
    assert await saga_env.result(order) == "cancelled"
    [message] = mails_for(order)
    assert message.subject == f"Your order {order.number} has been cancelled"
    assert await sync_to_async(sent_once)(f"{order.workflow_id}:notify:cancelled")


async def test_outcome_email_failing_does_not_hold_the_saga(saga_env):
    order = await sync_to_async(make_order)(fault_plan={"payment": "decline", "notify": "fail"})
    assert await saga_env.result(order) == "compensated"
    assert mails_for(order) == []
    failed = await sync_to_async(lambda: NotificationAttempt.objects.filter(order=order, succeeded=False).count())()
    assert failed == 3
