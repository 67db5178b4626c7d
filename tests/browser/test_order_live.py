"""The order pages in a real browser, following real sagas live over their websockets.

No page is ever reloaded: PageWatch checks a marker left in the window and counts load
events; the DOM recorder (conftest.RECORDER_JS) shows the states the page went through.
SANDBOX_LATENCY_MS slows the sandbox payment gateway and carrier so the page is open
before the saga reaches them.
"""

import asyncio
import os
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from playwright.async_api import expect

from ops.services import saga_retry

from ..conftest import order_state
from ..factories import make_order
from .conftest import PageWatch
from .helpers import (
    STEPS,
    create_order_in_form,
    eventually,
    expect_all_steps,
    expect_order_status,
    expect_state,
    full_snapshots,
    new_product,
    sign_in_with_form,
    track,
    wait_until_stuck,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    # whitenoise serves static files through a sync iterator, which Django's ASGI handler notes
    pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators"),
]

PASSWORD = "staff-pass-123"  # tests/conftest.py staff_user


async def test_order_created_in_the_form_completes_while_the_timeline_fills_in(saga_env, pages, staff_user,
                                                                               monkeypatch):
    monkeypatch.setenv("SANDBOX_LATENCY_MS", "700")
    operator = await sync_to_async(staff_user)("operator")
    product = await new_product(price="12.50", stock=5)
    page = await pages.page()
    watch = PageWatch(page)

    await sign_in_with_form(page, operator.username, PASSWORD, "/orders/new/")
    order_id = await create_order_in_form(page, product=product, quantity=2)
    await watch.arm()

    await expect_order_status(page, order_id, "Completed", "Completed")
    await expect_all_steps(page, order_id, "succeeded")
    await watch.assert_not_reloaded()
    assert watch.frames_from(f"/ws/orders/{order_id}/") >= 4, "the timeline did not arrive over the socket"

    snapshots = full_snapshots(await watch.snapshots())
    first, last = snapshots[0], snapshots[-1]
    # The page opened mid-saga and followed it: charged while the carrier was still booking...
    assert first["steps"]["notify"] == "pending" and "completed" not in first["order"].lower(), first
    assert any(s["steps"]["charge"] == "succeeded" and s["steps"]["ship"] == "running" for s in snapshots), snapshots
    # ...one step after the other, never going back.
    done = [sum(s["steps"][step] == "succeeded" for step in STEPS) for s in snapshots]
    assert done == sorted(done) and len(set(done)) >= 3, done
    assert last["steps"] == {step: "succeeded" for step in STEPS}
    # The saga and the page agree.
    assert await saga_env.result(await sync_to_async(order_state)(order_id)) == "completed"


async def test_declined_payment_shows_the_compensation_track(saga_env, pages, staff_user, monkeypatch):
    monkeypatch.setenv("SANDBOX_LATENCY_MS", "1500")  # the card is declined after the page is up
    operator = await sync_to_async(staff_user)("operator")
    product = await new_product(price="30.00", stock=3)
    page = await pages.page(operator)
    watch = PageWatch(page)

    order_id = await create_order_in_form(page, product=product, quantity=1, preset="decline")
    await watch.arm()

    compensation = page.locator(f"#saga-{order_id}-compensation")
    await expect(compensation).to_be_visible()
    await expect(compensation.get_by_role("heading", name="Compensation")).to_be_visible()
    await expect_state(page, order_id, "reserve", "compensated", undo=True)
    await expect(track(page, order_id, "reserve", undo=True)).to_contain_text("Release reservation")
    await expect_order_status(page, order_id, "Failed", "Compensated")
    await expect_state(page, order_id, "charge", "failed")
    await expect(track(page, order_id, "charge")).to_contain_text("card declined")
    await expect_state(page, order_id, "reserve", "compensated")
    for step in ("confirm", "ship", "notify"):
        await expect_state(page, order_id, step, "skipped")
    # Nothing was charged, so there is nothing to refund: only the reservation is undone.
    await expect(page.locator(f"#saga-{order_id}-compensation li.saga-step")).to_have_count(1)
    await watch.assert_not_reloaded()

    snapshots = full_snapshots(await watch.snapshots())
    assert not any(key.startswith("undo:") for key in snapshots[0]["steps"]), snapshots[0]
    assert snapshots[-1]["steps"]["undo:reserve"] == "compensated"


async def test_inventory_failure_is_undone_in_reverse_order(saga_env, pages, staff_user):
    """Charged, then the warehouse fails: refund first, then release (and the README screenshot)."""
    operator = await sync_to_async(staff_user)("operator")
    product = await new_product(price="49.90", stock=4)
    page = await pages.page(operator)

    order_id = await create_order_in_form(page, product=product, quantity=2, preset="inventory_failure",
                                          name="Ada Lovelace", email="ada@example.com")

    await expect_order_status(page, order_id, "Failed", "Compensated")
    undo = page.locator(f"#saga-{order_id}-compensation li.saga-step")
    await expect(undo).to_have_count(2)
    await expect(undo.nth(0)).to_have_id(f"saga-{order_id}-undo-charge")
    await expect(undo.nth(0)).to_contain_text("Refund payment")
    await expect(undo.nth(1)).to_have_id(f"saga-{order_id}-undo-reserve")
    for step in ("charge", "reserve"):
        await expect_state(page, order_id, step, "compensated", undo=True)
        await expect_state(page, order_id, step, "compensated")
    await expect_state(page, order_id, "confirm", "failed")
    await expect(page.locator(f"#saga-{order_id}-header")).to_contain_text("the saga has finished")

    # `SCREENSHOT_DIR=docs/screenshots pytest tests/browser -k inventory` refreshes the README's
    # picture (scripts/screenshot.py does exactly that).
    target = os.environ.get("SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(target) / "order-detail-compensation.png"), full_page=True)


async def test_customer_page_follows_the_order_live(saga_env, pages, staff_user, monkeypatch):
    product = await new_product(price="19.00", stock=3)
    # The gateway times out until retried: the saga waits, stuck at the charge.
    order = await sync_to_async(make_order)(products=[(product, 1)], fault_plan={"payment": "transient:3"})
    page = await pages.page()  # the customer: no staff account
    watch = PageWatch(page)
    await page.goto(f"/status/{order.public_token}/")
    await watch.arm()
    headline = page.locator("#customer-headline")
    await expect(headline).to_have_text("We've received your order")
    await wait_until_stuck(order.pk)
    await expect(headline).to_have_text("We've received your order")  # stuck is not the customer's problem
    await expect(page.get_by_text("Live updates paused")).to_be_hidden()

    monkeypatch.setenv("SANDBOX_LATENCY_MS", "500")  # the carrier takes its time after the charge
    operator = await sync_to_async(staff_user)("operator")
    await sync_to_async(saga_retry)(order_id=order.pk, actor=operator, reason="gateway back")

    await expect(headline).to_have_text("Packed and handed to the carrier")
    progress = page.get_by_role("list", name="Progress")
    await expect(progress.locator(".stage-done")).to_have_count(3)
    await expect(progress.locator("[aria-current=step]")).to_contain_text("Delivered")
    await expect(page.get_by_text("We've emailed you a confirmation.")).to_be_visible()
    await watch.assert_not_reloaded()
    assert watch.frames_from(f"/ws/status/{order.public_token}/") >= 3

    headlines = []
    for snapshot in await watch.snapshots():
        if snapshot["headline"] and (not headlines or headlines[-1] != snapshot["headline"]):
            headlines.append(snapshot["headline"])
    assert headlines == ["We've received your order", "Payment taken", "Packed and handed to the carrier"]
    assert await saga_env.result(order) == "completed"


async def test_disconnected_banner_and_the_timeline_reloaded_after_reconnect(saga_env, pages, staff_user,
                                                                            web_server):
    operator = await sync_to_async(staff_user)("operator")
    product = await new_product(price="8.00", stock=2)
    order = await sync_to_async(make_order)(products=[(product, 1)], fault_plan={"payment": "transient:3"})
    await wait_until_stuck(order.pk)

    page = await pages.page(operator)
    watch = PageWatch(page)
    await page.goto(f"/orders/{order.pk}/")
    await watch.arm()
    banner = page.locator("#live-status")
    await expect_state(page, order.pk, "charge", "stuck")
    await eventually(lambda: watch.frames_from(f"/ws/orders/{order.pk}/") > 0, message="the socket's first frame")
    await expect(banner).to_be_hidden()

    # The web server goes away (a deploy, a crash): every socket drops.
    await asyncio.to_thread(web_server.stop)
    try:
        await expect(banner).to_be_visible()
        await expect(banner).to_have_text("Live updates disconnected: reconnecting…")
        # Meanwhile the saga moves on: retried from elsewhere, it finishes while this page is deaf.
        await sync_to_async(saga_retry)(order_id=order.pk, actor=operator, reason="retried while the page was offline")
        assert await saga_env.result(order) == "completed"
        await expect_state(page, order.pk, "charge", "stuck")
    finally:
        await asyncio.to_thread(web_server.start)

    # Back: the socket reconnects by itself, the banner goes, and the page catches up from the
    # database with everything it missed.
    await expect(banner).to_be_hidden()
    await expect_all_steps(page, order.pk, "succeeded")
    await expect_order_status(page, order.pk, "Completed", "Completed")
    await expect(page.locator(f"#saga-{order.pk}-audit")).to_contain_text("retried while the page was offline")
    await watch.assert_not_reloaded()
