"""What the browser tests do on the pages, and how they read the saga's state off them."""

import asyncio
import re
import time

from asgiref.sync import sync_to_async
from playwright.async_api import expect

from orders.models import Order
from orders.status import SagaStatus

from ..conftest import order_state, wait_for
from ..factories import make_product

STEPS = ("validate", "reserve", "charge", "confirm", "ship", "notify")


def state(name: str) -> re.Pattern:
    """The class a timeline track carries in that state (state-succeeded, state-stuck...)."""
    return re.compile(rf"(^|\s)state-{name}(\s|$)")


def track(page, order_id: int, step: str, *, undo: bool = False):
    """A step's track (or, undo=True, its compensation's): label, state, events."""
    return page.locator(f"#saga-{order_id}-{'undo' if undo else 'step'}-{step}")


def track_head(page, order_id: int, step: str, *, undo: bool = False):
    """The part of a track that carries its state class and badge."""
    return page.locator(f"#saga-{order_id}-{'undo' if undo else 'step'}-{step}-head")


async def expect_state(page, order_id: int, step: str, name: str, *, undo: bool = False) -> None:
    await expect(track_head(page, order_id, step, undo=undo)).to_have_class(state(name))


async def expect_all_steps(page, order_id: int, name: str) -> None:
    for step in STEPS:
        await expect_state(page, order_id, step, name)


async def expect_order_status(page, order_id: int, status: str, saga: str) -> None:
    summary = page.locator(f"#order-summary-{order_id}")
    await expect(summary.locator(".order-status")).to_have_text(re.compile(rf"^Order: {status}$", re.IGNORECASE))
    await expect(summary.locator(".saga-status")).to_have_text(re.compile(rf"^Saga: {saga}$", re.IGNORECASE))


async def new_product(**kwargs):
    return await sync_to_async(make_product)(**kwargs)


async def sign_in_with_form(page, username: str, password: str, next_path: str) -> None:
    await page.goto(f"/accounts/login/?next={next_path}")
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"**{next_path}")


async def create_order_in_form(page, *, product, quantity: int, preset: str = "",
                               name: str = "Grace Hopper", email: str = "grace@example.com") -> int:
    """Fill the create form as staff do and submit it; returns the new order's id."""
    if not page.url.endswith("/orders/new/"):
        await page.goto("/orders/new/")
    await page.get_by_label("Customer name").fill(name)
    await page.get_by_label("Customer email").fill(email)
    await page.get_by_label("Street and number").fill("Keizersgracht 1")
    await page.get_by_label("Postcode").fill("1015 CJ")
    await page.get_by_label("City").fill("Amsterdam")
    await page.get_by_label("Country").select_option("NL")
    await page.get_by_label("Product, line 1").select_option(str(product.pk))
    await page.get_by_label("Quantity, line 1").fill(str(quantity))
    await page.get_by_label("Fault plan (sandbox)").select_option(preset)
    await page.get_by_role("button", name="Create order").click()
    await page.wait_for_url(re.compile(r"/orders/\d+/$"))
    return int(re.search(r"/orders/(\d+)/$", page.url).group(1))


async def wait_until_stuck(order_id: int) -> Order:
    await wait_for(lambda: order_state(order_id).saga_status == SagaStatus.STUCK, message="the saga to get stuck")
    return await sync_to_async(order_state)(order_id)


def full_snapshots(snapshots: list[dict]) -> list[dict]:
    """The recorded snapshots of a detail page taken once all six steps were in the DOM."""
    return [s for s in snapshots if sum(1 for key in s["steps"] if not key.startswith("undo:")) == len(STEPS)]


async def eventually(predicate, *, timeout: float = 30, message: str = "condition") -> None:
    """Wait for a cheap in-process condition (one that needs no database) to hold."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(0.02)
