"""A return in a real browser: an operator opens it on a completed order's page, the parcel
comes back (the carrier's `returned` signal), and the staff page and the customer's page
follow the return to its refund live, without a reload."""

import pytest
from asgiref.sync import sync_to_async
from playwright.async_api import expect

from orders.models import Order, Return
from orders.signals import parcel_returned

from ..factories import make_order
from .conftest import PageWatch
from .helpers import new_product

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators"),
]


async def test_operator_opens_a_return_and_watches_it_refund_live(saga_env, pages, staff_user, monkeypatch):
    operator = await sync_to_async(staff_user)("operator")
    product = await new_product(price="19.90", stock=4)
    order = await sync_to_async(make_order)(products=[(product, 2)])
    assert await saga_env.result(order) == "completed"
    order = await sync_to_async(Order.objects.get)(pk=order.pk)
    line_id = await sync_to_async(lambda: order.lines.get().pk)()

    page = await pages.page(operator)
    await page.goto(f"/orders/{order.pk}/")
    section = page.locator(f"#order-returns-{order.pk}")
    await expect(section).to_contain_text("No returns or refunds.")
    await page.fill(f"#return-qty-{line_id}", "1")
    await page.fill(f"#return-reason-{order.pk}", "Too small")
    await page.click("button:has-text('Open return')")
    await expect(page.locator("ul.messages")).to_contain_text("will be refunded once the parcel is back")
    await expect(section.locator("[data-return-state]")).to_have_text("waiting for the parcel")
    ret = await sync_to_async(Return.objects.get)(order=order)

    customer = await pages.page()
    await customer.goto(f"/status/{order.public_token}/")
    returns = customer.locator(".customer-returns")
    await expect(returns).to_contain_text(f"Return of 1 x {product.name} (19.90 EUR)")
    await expect(returns).to_contain_text("We're waiting for your parcel to come back")
    await expect(customer.locator("body")).not_to_contain_text("Too small")  # staff's words stay with staff

    staff_watch, customer_watch = PageWatch(page), PageWatch(customer)
    await staff_watch.arm()
    await customer_watch.arm()
    # The gateway is slow, so the pages see the refund under way before it is done.
    monkeypatch.setenv("SANDBOX_LATENCY_MS", "1500")
    await sync_to_async(parcel_returned.send)(sender=None, order_id=order.pk, source="carrier")

    await expect(section.locator("[data-return-state]")).to_have_text("refunding")
    await expect(returns.locator("[data-return-state]")).to_contain_text("Your refund is on its way")
    await expect(section.locator("[data-return-state]")).to_have_text("refunded")
    await expect(section).to_contain_text("refunded 19.90")
    await expect(returns.locator("[data-return-state='refunded']")).to_contain_text("Refunded")
    # The timeline has the return's steps, and its refund is in the payments ledger.
    await expect(page.locator(f"#order-ledger-{order.pk}-payments")).to_contain_text("19.90")
    await staff_watch.assert_not_reloaded()
    await customer_watch.assert_not_reloaded()
    assert (await sync_to_async(Return.objects.get)(pk=ret.pk)).state == Return.State.REFUNDED
