"""Page wording fixes (issue 11) as a person sees them: labelled badges and no current step
on a completed order, the dashboard's counters each saying what they count, and the stuck
queue's holdings, oldest age and bulk rollback preview."""

import re
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from playwright.async_api import expect

from ..factories import make_order, make_product
from ..saga_states import clock_set_back, order_advanced, order_completed, order_stuck

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators"),
]


def completed_order():
    order = make_order(start_saga=False)
    order_completed(order)
    return order


def stuck_orders():
    widget = make_product(price="10.00", name="Widget", stock=20)
    stuck = []
    for quantity, hours in ((2, 5), (1, 0)):
        order = make_order(start_saga=False, products=[(widget, quantity)])
        with clock_set_back(timedelta(hours=hours)):
            order_advanced(order, through="charge")
            order_stuck(order, step="confirm", error="warehouse unavailable: timed out")
        stuck.append(order)
    return stuck


async def test_completed_order_badges_are_labelled(pages, staff_user):
    viewer = await sync_to_async(staff_user)("viewer")
    order = await sync_to_async(completed_order)()
    page = await pages.page(viewer)
    await page.goto(f"/orders/{order.pk}/")
    summary = page.locator(f"#order-summary-{order.pk}")
    await expect(summary.locator(".order-status")).to_have_text("Order: Completed")
    await expect(summary.locator(".saga-status")).to_have_text("Saga: completed")
    await expect(summary.locator(".badge-label").first).to_be_visible()
    await expect(summary).not_to_contain_text("Current step")
    await expect(summary).not_to_contain_text("Notify customer")


async def test_dashboard_counters_say_what_they_count(pages, staff_user):
    viewer = await sync_to_async(staff_user)("viewer")
    page = await pages.page(viewer)
    await page.goto("/")
    explained = page.locator(".counter-explain")
    await expect(explained).to_have_count(4)  # stuck, follow-ups, all orders, flagged
    texts = await explained.all_inner_texts()
    assert len(set(texts)) == 4


async def test_stuck_queue_holdings_oldest_age_and_bulk_preview(pages, staff_user):
    operator = await sync_to_async(staff_user)("operator")
    old, new = await sync_to_async(stuck_orders)()
    page = await pages.page(operator)
    await page.goto("/ops/stuck/")
    await expect(page.locator("#stuck-oldest")).to_contain_text(re.compile(r"waiting for 5\Whours"))
    row = page.locator(f"#stuck-{old.pk}")
    await expect(row.locator(".stuck-amount")).to_have_text("20.00 EUR")
    await expect(row.locator(".stuck-held")).to_have_text("20.00 EUR charged · 2 items of stock held")

    await page.get_by_label(f"Select {old.number}").check()
    await page.get_by_label(f"Select {new.number}").check()
    await page.locator("#bulk-action").select_option("compensate")
    await page.get_by_role("button", name="Apply to ticked orders").click()
    await expect(page.get_by_role("heading", name="Roll back 2 stuck sagas?")).to_be_visible()
    preview = page.locator("#bulk-preview")
    await expect(preview).to_contain_text("Refund 30.00 EUR to 2 customers")
    await expect(preview).to_contain_text("Release reservations of 3 items")
    await expect(preview).to_contain_text("No email to the customers")
    await expect(page.get_by_role("button", name="Roll back 2 orders")).to_be_visible()
