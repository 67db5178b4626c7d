"""A shipment the carrier refuses reads "refused by the carrier" (issue 11), not "undone" or
"Cancelled 0 of 1 parcel booked"; the rollback says what it did. Real saga."""

import pytest
from asgiref.sync import sync_to_async
from playwright.async_api import expect

from .helpers import create_order_in_form, expect_order_status, new_product, track_head

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators"),
]


async def test_refused_shipment(saga_env, pages, staff_user):
    operator = await sync_to_async(staff_user)("operator")
    product = await new_product(price="30.00", stock=5)
    page = await pages.page(operator)
    order_id = await create_order_in_form(page, product=product, quantity=1, preset="shipping_failure")
    await expect_order_status(page, order_id, "Failed", "Compensated")
    ship = track_head(page, order_id, "ship")
    await expect(ship).to_contain_text("refused by the carrier")
    await expect(ship).not_to_contain_text("undone")
    await expect(page.locator(f"#order-ledger-{order_id}-shipment")).to_contain_text(
        "no parcel was booked: the carrier refused the shipment")
    await expect(page.locator("body")).not_to_contain_text("Cancelled 0 of")
    # Rows re-sent with a whole section (the compensation track) are kept: only an appended
    # row already on the page is dropped.
    refund_rows = page.locator(f"#saga-{order_id}-undo-charge-events > li")
    await expect(refund_rows).to_have_count(2)  # compensating, compensated
    outcome = page.locator(f"#rollback-outcome-{order_id}")
    await expect(outcome).to_contain_text("Refunded 30.00 EUR")
    await expect(outcome).to_contain_text("Restocked 1 item")
