"""In the browser: signing out in one tab stops the live updates of the others at once
(their sockets are closed with 4403, so htmx does not reconnect), and the page says so."""

import pytest
from asgiref.sync import sync_to_async
from playwright.async_api import expect

from ..test_ops_data import stuck_order

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators"),
]


async def test_signing_out_in_one_tab_stops_the_live_pages_in_the_others(pages, staff_user):
    viewer = await sync_to_async(staff_user)("viewer")
    order = await sync_to_async(stuck_order)()
    context = await pages.context(viewer)
    watching = await context.new_page()
    closes = []
    watching.on("websocket", lambda ws: ws.on("close", lambda _ws: closes.append(ws.url)))
    await watching.goto(f"/orders/{order.pk}/")
    await expect(watching.locator(f"#order-summary-{order.pk}")).to_be_visible()
    await expect(watching.locator("#live-status")).to_be_hidden()

    other_tab = await context.new_page()
    await other_tab.goto("/")
    await other_tab.get_by_role("button", name="Sign out").click()
    await other_tab.wait_for_load_state("load")

    status = watching.locator("#live-status")
    await expect(status).to_be_visible(timeout=5_000)
    await expect(status).to_have_text("Live updates stopped. Reload the page to see the latest state.")
    assert any(url.endswith(f"/ws/orders/{order.pk}/") for url in closes)
