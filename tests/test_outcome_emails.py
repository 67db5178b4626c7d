"""The customer is told of every outcome of the order saga, each email once, in plain words:
confirmed (test_saga_paths), failed with what was refunded, cancelled."""

import pytest
from asgiref.sync import sync_to_async
from django.core import mail

from django.test import Client

from orders.models import FollowUp, NotificationAttempt, OperatorAction, Order, SagaEvent
from orders.selectors.timeline import saga_events_with_commands, saga_timeline_build
from orders.status import OrderStatus, SagaStatus
from ops.services import followup_resolve, order_cancel

from .conftest import order_state, wait_for
from .factories import make_order, make_product
from .replaying import replays

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


async def test_a_customer_the_mailer_refuses_is_on_the_follow_up_queue_until_staff_resolve(saga_env, operator_user):
    order = await sync_to_async(make_order)(fault_plan={"shipping": "fail", "notify": "fail"})
    assert await saga_env.result(order) == "compensated"
    state = await sync_to_async(order_state)(order.pk)
    # The saga ended as it would: the follow-up holds nothing up and changes no state.
    assert (state.status, state.saga_status) == (OrderStatus.FAILED, SagaStatus.COMPENSATED)
    [followup] = await sync_to_async(lambda: list(FollowUp.objects.filter(order=order)))()
    assert (followup.kind, followup.state) == (FollowUp.Kind.OUTCOME_UNTOLD, FollowUp.State.OPEN)
    assert followup.reason.startswith("Could not tell the customer that their order did not go through: "
                                      "mail server refused the message"), followup.reason

    # Staff see it on their queue, with what happened and only what fits: no resend.
    page = await sync_to_async(followups_page_as)(operator_user)
    assert order.number in page and "customer not told the order ended" in page
    assert f"reason-resolved-{followup.pk}" in page and f"reason-resend-{followup.pk}" not in page

    # They reached the customer another way: resolved here, no saga to signal.
    audit = await sync_to_async(followup_resolve)(order_id=order.pk, actor=operator_user, reason="Phoned them")
    assert audit.outcome == OperatorAction.Outcome.APPLIED
    followup = await sync_to_async(FollowUp.objects.get)(pk=followup.pk)
    assert followup.state == FollowUp.State.RESOLVED
    timeline = await sync_to_async(lambda: saga_timeline_build(
        Order.objects.get(pk=order.pk), saga_events_with_commands(order.pk)))()
    notify = timeline.step_track("notify")
    assert [e.kind for e in notify.events] == ["followup", "signal"] and notify.state == "resolved"
    await replays(saga_env.handle(order), "outcome_untold_followup")


def followups_page_as(user) -> str:
    client = Client()
    client.force_login(user)
    return client.get("/ops/followups/").content.decode()
