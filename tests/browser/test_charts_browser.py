"""The charts in a real browser, following a real saga live: the dashboard's charts and the
order page's waterfall redraw over their sockets as the saga gets stuck and is retried,
without the page being reloaded.

`SCREENSHOT_DIR=docs/screenshots pytest tests/browser/test_charts_browser.py` refreshes
docs/screenshots/dashboard-charts.png and order-waterfall.png (scripts/screenshot.py does).
"""

import os
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from playwright.async_api import expect

from ops.services import saga_retry

from ..factories import make_order
from .conftest import PageWatch
from .helpers import new_product, wait_until_stuck

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    # whitenoise serves static files through a sync iterator, which Django's ASGI handler notes
    pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators"),
]


async def screenshot(page, name: str) -> None:
    target = os.environ.get("SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(target) / name), full_page=True)


async def test_dashboard_charts_and_the_waterfall_follow_a_saga_live(saga_env, pages, staff_user, monkeypatch):
    operator = await sync_to_async(staff_user)("operator")
    product = await new_product(price="24.00", stock=5)

    dashboard = await pages.page(operator)
    dashboard_watch = PageWatch(dashboard)
    await dashboard.goto("/")
    await dashboard_watch.arm()
    # Nothing yet: every chart says so in a sentence, not an empty box.
    await expect(dashboard.locator("#chart-stuck-ages .chart-empty")).to_have_text("No saga is stuck.")
    await expect(dashboard.locator("#chart-orders-per-hour .chart-empty")).to_have_text(
        "No orders were placed in the last 24 hours.")

    # The gateway times out until retried: the saga gets stuck at the charge.
    order = await sync_to_async(make_order)(products=[(product, 2)], fault_plan={"payment": "transient:3"})
    await wait_until_stuck(order.pk)

    per_hour = dashboard.locator("#chart-orders-per-hour svg")
    await expect(per_hour).to_be_visible()
    await expect(per_hour.locator("rect.chart-outcome-stuck")).to_have_count(1)
    await expect(dashboard.locator("#chart-stuck-ages svg")).to_be_visible()
    await expect(dashboard.locator("#chart-stuck-ages .chart-summary")).to_contain_text("1 stuck saga waiting")
    await expect(dashboard.locator("#chart-failure-rate")).to_contain_text("Charge payment")
    await expect(dashboard.locator("#chart-stuck-holdings")).to_contain_text("2 units")
    await dashboard_watch.assert_not_reloaded()
    await screenshot(dashboard, "dashboard-charts.png")

    page = await pages.page(operator)
    watch = PageWatch(page)
    await page.goto(f"/orders/{order.pk}/")
    await watch.arm()
    waterfall = page.locator(f"#order-{order.pk}-waterfall")
    await expect(waterfall.locator("svg")).to_be_visible()
    await expect(waterfall.locator('[data-row="step-charge"] rect.wf-attempt.wf-failed')).to_have_count(3)
    await expect(waterfall.locator('[data-row="step-charge"] rect.wf-operator-wait.wf-open')).to_have_count(1)
    await expect(waterfall.locator('[data-row="step-notify"]')).to_have_count(0)

    # An operator retries: the saga goes on, and both pages redraw as it does.
    monkeypatch.setenv("SANDBOX_LATENCY_MS", "300")
    await sync_to_async(saga_retry)(order_id=order.pk, actor=operator, reason="gateway back")
    assert await saga_env.result(order) == "completed"

    await expect(waterfall.locator('[data-row="step-notify"] rect.wf-attempt.wf-succeeded')).to_have_count(1)
    await expect(waterfall.locator('[data-row="step-charge"] rect.wf-attempt.wf-succeeded')).to_have_count(1)
    # The wait for the operator ended when the retry arrived, and says who answered.
    ended = waterfall.locator('[data-row="step-charge"] rect.wf-operator-wait')
    await expect(ended).to_have_count(1)
    await expect(ended).not_to_have_class("wf-open")
    await expect(ended.locator("title")).to_contain_text(f"answered by {operator.username}")
    await expect(waterfall.locator("desc")).to_contain_text("1 wait for staff")
    await watch.assert_not_reloaded()
    assert watch.frames_from(f"/ws/orders/{order.pk}/") >= 2

    await expect(dashboard.locator("#chart-stuck-ages .chart-empty")).to_have_text("No saga is stuck.")
    await expect(per_hour.locator("rect.chart-outcome-completed")).to_have_count(1)
    await expect(per_hour.locator("rect.chart-outcome-stuck")).to_have_count(0)
    await dashboard_watch.assert_not_reloaded()

    await waterfall.locator("details summary").click()
    await expect(waterfall.locator("table")).to_contain_text("Waiting for an operator")
    await screenshot(page, "order-waterfall.png")
