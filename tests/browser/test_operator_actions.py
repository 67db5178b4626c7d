"""Rescuing sagas from the browser: retry a stuck one, resolve a follow-up, and what a viewer
may not do. Real sagas, real pages, no reloads."""

import re
from urllib.parse import urlsplit

import pytest
from asgiref.sync import sync_to_async
from playwright.async_api import expect

from orders.models import OperatorAction
from orders.models import FollowUp
from orders.status import SagaStatus

from ..conftest import order_state, wait_for
from ..factories import make_order
from .conftest import PageWatch
from .helpers import (
    create_order_in_form,
    expect_all_steps,
    expect_order_status,
    expect_state,
    new_product,
    track,
    wait_until_stuck,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    # whitenoise serves static files through a sync iterator, which Django's ASGI handler notes
    pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators"),
]


def audit_rows(order_id: int) -> list[tuple[str, str]]:
    return list(OperatorAction.objects.filter(order_id=order_id).values_list("action", "outcome"))


async def test_gateway_outage_gets_stuck_and_the_operator_retries_it(saga_env, pages, staff_user):
    operator = await sync_to_async(staff_user)("operator")
    product = await new_product(price="19.90", stock=10)
    page = await pages.page(operator)
    watch = PageWatch(page)
    order_id = await create_order_in_form(page, product=product, quantity=2, preset="gateway_outage")
    await watch.arm()

    # The gateway keeps timing out: the saga gives up on the charge and waits for someone.
    await expect_state(page, order_id, "charge", "stuck")
    await expect(track(page, order_id, "charge")).to_contain_text("stuck: waiting for an operator")
    await expect_order_status(page, order_id, "Processing", "Stuck")
    for step in ("confirm", "ship", "notify"):
        await expect_state(page, order_id, step, "pending")
    actions = page.locator(f"#order-actions-{order_id}")
    retry = actions.get_by_role("button", name="Retry step")
    await expect(retry).to_be_visible()
    await expect(actions.get_by_role("button", name="Compensate")).to_be_visible()

    action_posts = []
    page.on("request", lambda r: action_posts.append(urlsplit(r.url).path) if "/actions/" in r.url else None)
    dialogs = []

    # First thoughts: the operator cancels the confirmation, and nothing is sent.
    async def dismiss(dialog):
        dialogs.append(dialog.message)
        await dialog.dismiss()

    page.once("dialog", dismiss)
    await retry.click()
    assert len(dialogs) == 1

    async def accept(dialog):
        dialogs.append(dialog.message)
        await dialog.accept()

    await actions.get_by_label("Reason").fill("gateway is back")
    page.once("dialog", accept)
    await retry.click()

    order = await sync_to_async(order_state)(order_id)
    assert dialogs == [f"Retry the charge payment step of {order.number}? The saga runs the failed step again."] * 2
    await expect_all_steps(page, order_id, "succeeded")
    await expect_order_status(page, order_id, "Completed", "Completed")
    audit = page.locator(f"#saga-{order_id}-audit")
    await expect(audit).to_contain_text(operator.username)
    await expect(audit).to_contain_text("gateway is back")
    # The saga needs nothing more; its parcel is on the way, so only the delivery's actions fit (issue 8).
    await expect(actions.get_by_role("button", name="Retry step")).to_have_count(0)
    await expect(actions.get_by_role("button", name="Mark delivered")).to_have_count(1)
    await watch.assert_not_reloaded()

    # One click that was confirmed, one request, one audit row, applied by the saga.
    assert action_posts == [f"/orders/{order_id}/actions/retry/"]
    assert await sync_to_async(audit_rows)(order_id) == [("retry", "applied")]
    assert await saga_env.result(order) == "completed"


async def test_notification_failure_is_resolved_from_the_followup_queue(saga_env, pages, staff_user):
    support = await sync_to_async(staff_user)("support")
    product = await new_product(price="5.00", stock=3)
    order = await sync_to_async(make_order)(products=[(product, 1)], fault_plan={"notify": "fail"},
                                            email="unreachable@example.com")
    context = await pages.context(support)

    # The order's page stays open in one tab...
    detail = await context.new_page()
    detail_watch = PageWatch(detail)
    await detail.goto(f"/orders/{order.pk}/")
    await detail_watch.arm()
    await expect_state(detail, order.pk, "notify", "followup")
    await expect_order_status(detail, order.pk, "Processing", "Needs follow-up")

    # ...while the queue is worked in another.
    queue = await context.new_page()
    queue_watch = PageWatch(queue)
    await queue.goto("/ops/followups/")
    await queue_watch.arm()
    followup = await sync_to_async(FollowUp.objects.get)(order_id=order.pk)
    row = queue.locator(f"#followup-{followup.pk}")
    await expect(row).to_contain_text(order.number)
    await expect(row).to_contain_text("unreachable@example.com")

    await row.get_by_role("button", name=f"Claim {order.number}").click()
    await expect(row.get_by_role("cell").nth(4)).to_contain_text("You")
    await expect(row.get_by_role("button", name=f"Release {order.number}")).to_be_visible()

    await row.get_by_text("Resolve…").click()
    await row.locator(f"#reason-resolved-{followup.pk}").fill("phoned the customer")
    await row.get_by_role("button", name="Mark resolved").click()
    await expect(queue.locator("#followup-action-result")).to_contain_text(
        f"Follow-up of {order.number} marked resolved")

    # The saga finishes; the open order page follows it there by itself.
    assert await saga_env.result(order) == "completed"
    await expect_state(detail, order.pk, "notify", "resolved")
    await expect_order_status(detail, order.pk, "Completed", "Completed")
    await expect(detail.locator(f"#saga-{order.pk}-audit")).to_contain_text("phoned the customer")
    await detail_watch.assert_not_reloaded()
    await queue_watch.assert_not_reloaded()

    followup = await sync_to_async(FollowUp.objects.get)(pk=followup.pk)
    assert followup.state == FollowUp.State.RESOLVED and followup.claimed_by_id == support.pk
    assert await sync_to_async(audit_rows)(order.pk) == [("resolved", "applied")]


async def test_viewer_sees_no_buttons_and_a_forged_retry_is_refused(saga_env, pages, staff_user):
    viewer = await sync_to_async(staff_user)("viewer")
    product = await new_product(price="7.00", stock=2)
    order = await sync_to_async(make_order)(products=[(product, 1)], fault_plan={"payment": "transient:3"})
    await wait_until_stuck(order.pk)

    page = await pages.page(viewer)
    await page.goto(f"/orders/{order.pk}/")
    await expect_state(page, order.pk, "charge", "stuck")
    actions = page.locator(f"#order-actions-{order.pk}")
    await expect(actions).to_contain_text("You can follow this order; acting on sagas needs the operator or support role.")
    await expect(actions.get_by_role("button")).to_have_count(0)
    await expect(actions.locator("form")).to_have_count(0)

    await page.goto("/ops/stuck/")
    row = page.locator(f"#stuck-{order.pk}")
    await expect(row).to_contain_text(order.number)
    await expect(row.get_by_text("Retry…")).to_have_count(0)
    await expect(row.get_by_role("button")).to_have_count(0)

    # The viewer knows the URL and posts anyway, with a valid CSRF token from their session.
    cookies = {c["name"]: c["value"] for c in await page.context.cookies()}
    token = cookies["csrftoken"]
    for action in ("retry", "compensate"):
        response = await page.request.post(
            f"/orders/{order.pk}/actions/{action}/",
            form={"csrfmiddlewaretoken": token, "reason": "forged"},
            headers={"X-CSRFToken": token, "Referer": page.url},
        )
        assert response.status == 403
        # Refused by the permission check (not by CSRF): the page says why, and that nothing changed.
        body = await response.text()
        assert re.search(rf"You are not allowed to {action} sagas", body, re.IGNORECASE), body[:500]
        assert "Nothing was changed." in body
    htmx = await page.request.post(
        f"/orders/{order.pk}/actions/retry/", form={"reason": "forged"},
        headers={"X-CSRFToken": token, "HX-Request": "true", "HX-Target": f"order-actions-{order.pk}"},
    )
    assert htmx.status == 403

    assert await sync_to_async(audit_rows)(order.pk) == []
    await wait_for(lambda: order_state(order.pk).saga_status == SagaStatus.STUCK, message="the saga still stuck")
