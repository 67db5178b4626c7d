"""The operator actions card (issue 11): compensate and cancel look and read apart, the cancel
confirmation previews the rollback without promising "not charged", and "Retry sent" stays
in view while the saga goes on and the buttons card is re-rendered live. Real saga."""

import re

import pytest
from asgiref.sync import sync_to_async
from playwright.async_api import expect

from ..conftest import order_state
from .helpers import create_order_in_form, expect_order_status, expect_state, new_product, track, track_head

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators"),
]


async def test_stuck_order_rollback_buttons_then_retry_answer_stays(saga_env, pages, staff_user):
    operator = await sync_to_async(staff_user)("operator")
    product = await new_product(price="19.90", stock=10)
    page = await pages.page(operator)
    order_id = await create_order_in_form(page, product=product, quantity=2, preset="gateway_outage")
    await expect_state(page, order_id, "charge", "stuck")
    summary = page.locator(f"#order-summary-{order_id}")
    await expect(summary.locator(".last-error")).to_contain_text("waiting for an operator")

    actions = page.locator(f"#order-actions-{order_id}")
    compensate = actions.get_by_role("button", name="Compensate (roll back)")
    cancel = actions.get_by_role("button", name="Cancel order")
    await expect(compensate).to_be_visible()
    await expect(cancel).to_be_visible()
    # Not alike: different colours and different words.
    colours = [await button.evaluate("b => getComputedStyle(b).backgroundColor") for button in (compensate, cancel)]
    assert colours[0] != colours[1]
    await expect(actions).to_contain_text("the order ends as failed")
    await expect(actions).to_contain_text("the order ends as cancelled")
    # What a rollback would do now, from the ledgers: nothing charged yet, two items held.
    preview = page.locator(f"#rollback-preview-{order_id}")
    await expect(preview).to_contain_text("Nothing to refund: the customer has not been charged")
    await expect(preview).to_contain_text("Release the reservation of 2 items")

    dialogs = []

    async def dismiss(dialog):
        dialogs.append(dialog.message)
        await dialog.dismiss()

    page.once("dialog", dismiss)
    await cancel.click()
    assert "not charged" not in dialogs[0] and "Nothing to refund" in dialogs[0]
    assert "Release the reservation of 2 items" in dialogs[0]

    async def accept(dialog):
        await dialog.accept()

    page.once("dialog", accept)
    await actions.get_by_label("Reason").fill("gateway is back")
    await actions.get_by_role("button", name="Retry step").click()
    answer = page.locator(f"#action-message-{order_id}")
    await expect(answer).to_contain_text("Retry sent to the saga")

    # The saga goes on and finishes; the live buttons card offers only what fits a shipped
    # order now (the delivery's), and the answer is still there next to it.
    await expect_order_status(page, order_id, "Completed", "Completed")
    await expect(actions).to_contain_text("Mark delivered")
    await expect(actions.get_by_role("button", name="Retry step")).to_have_count(0)
    await expect(answer).to_contain_text("Retry sent to the saga")
    # The error box went with the wait; the retried step counts the attempt that succeeded.
    await expect(summary.locator(".last-error")).to_have_count(0)
    await expect(summary).not_to_contain_text("Current step")
    await expect(track_head(page, order_id, "charge")).to_contain_text(re.compile(r"\b4 attempts\b"))
    await expect(track(page, order_id, "charge")).not_to_contain_text("stuck: waiting for an operator")
    order = await sync_to_async(order_state)(order_id)
    assert await saga_env.result(order) == "completed"
