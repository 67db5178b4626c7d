"""Layout fixes (issue 11), measured in Chromium at 1366 px: a long customer email wraps
inside its card, order numbers stay on one line, the admin's order list is not clipped."""

import pytest
from asgiref.sync import sync_to_async

from ..factories import make_order, make_product

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators"),
]

LONG_EMAIL = "customer.with.a.really.long.address.for.invoices.and.more@subdomain.example-company.com"


def orders_with_a_long_email():
    product = make_product(stock=50)
    return [make_order(start_saga=False, products=[(product, 1)], email=LONG_EMAIL) for _ in range(3)]


async def laptop_page(pages, user):
    page = await pages.page(user)
    await page.set_viewport_size({"width": 1366, "height": 768})
    return page


async def test_long_email_wraps_inside_the_summary_card(pages, staff_user):
    operator = await sync_to_async(staff_user)("operator")
    order = (await sync_to_async(orders_with_a_long_email)())[0]
    page = await laptop_page(pages, operator)
    await page.goto(f"/orders/{order.pk}/")
    await page.locator(f"#order-summary-{order.pk} .customer-contact").wait_for()
    # Measured in one go: the socket's connect frame may swap the cards in between two reads.
    card, email, actions = await page.evaluate("""(pk) => [
        `#order-summary-${pk}`, `#order-summary-${pk} .customer-contact`, `#order-actions-${pk}`,
    ].map((selector) => { const r = document.querySelector(selector).getBoundingClientRect();
                          return {x: r.x, width: r.width, scroll: document.querySelector(selector).scrollWidth}; })""",
        order.pk)
    assert email["x"] + email["width"] <= card["x"] + card["width"] + 1
    assert email["scroll"] <= email["width"] + 1  # the address wraps, it does not overflow its box
    assert card["x"] + card["width"] <= actions["x"]  # nothing spills into the actions card


async def test_order_numbers_do_not_wrap_in_lists(pages, staff_user):
    viewer = await sync_to_async(staff_user)("viewer")
    orders = await sync_to_async(orders_with_a_long_email)()
    page = await laptop_page(pages, viewer)
    await page.set_viewport_size({"width": 700, "height": 768})  # narrow: where SO-/000012 broke
    await page.goto("/orders/")
    for order in orders:
        link = page.locator(f"#order-row-{order.pk} td:first-child a")
        lines = await link.evaluate("a => a.getClientRects().length")
        assert lines == 1, f"{order.number} wraps over {lines} lines"


async def test_admin_order_list_fits_1366_px(pages, staff_user):
    admin = await sync_to_async(staff_user)("admin")
    await sync_to_async(orders_with_a_long_email)()
    page = await laptop_page(pages, admin)
    await page.goto("/admin/orders/order/")
    width = await page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 1366, f"the admin order list is {width} px wide"
    results = await page.locator("#result_list").bounding_box()
    assert results["x"] + results["width"] <= 1366
