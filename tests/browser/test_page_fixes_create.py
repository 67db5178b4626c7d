"""The create form refuses more than is in stock (issue 11): an error on the line, the page
stays, nothing is created."""

import pytest
from asgiref.sync import sync_to_async
from playwright.async_api import expect

from orders.models import Order

from .helpers import new_product

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators"),
]


async def test_more_than_in_stock_is_refused(pages, staff_user):
    operator = await sync_to_async(staff_user)("operator")
    product = await new_product(price="10.00", stock=3)
    page = await pages.page(operator)
    await page.goto("/orders/new/")
    await page.get_by_label("Customer name").fill("Grace Hopper")
    await page.get_by_label("Customer email").fill("grace@example.com")
    await page.get_by_label("Product, line 1").select_option(str(product.pk))
    await page.get_by_label("Quantity, line 1").fill("4")
    await page.get_by_role("button", name="Create order").click()
    await expect(page.locator("#error-line-0-quantity")).to_contain_text(
        f"{product.name} is only 3 in stock: lower the quantity to 3 or less.")
    assert page.url.endswith("/orders/new/")
    assert not await sync_to_async(Order.objects.exists)()
