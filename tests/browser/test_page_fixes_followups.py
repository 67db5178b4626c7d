"""The follow-up queue after resolving (issue 11): the header's count goes down by itself,
the badge says how it was closed and shows the resolver's reason. Real saga."""

import pytest
from asgiref.sync import sync_to_async
from playwright.async_api import expect

from orders.models import FollowUp

from ..conftest import wait_for
from ..factories import make_order
from .helpers import new_product

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators"),
]


async def test_resolving_updates_the_header_and_the_badge_shows_the_reason(saga_env, pages, staff_user):
    support = await sync_to_async(staff_user)("support")
    product = await new_product(price="5.00", stock=3)
    order = await sync_to_async(make_order)(products=[(product, 1)], fault_plan={"notify": "fail"},
                                            email="unreachable@example.com")
    await wait_for(lambda: FollowUp.objects.filter(order_id=order.pk).exists(), message="the follow-up to open")
    followup = await sync_to_async(FollowUp.objects.get)(order_id=order.pk)
    queue = await pages.page(support)
    await queue.goto("/ops/followups/")
    heading = queue.locator("#followup-list-heading")
    await expect(heading).to_have_text("Open: 1")

    row = queue.locator(f"#followup-{followup.pk}")
    await row.get_by_text("Resolve…").click()
    await row.locator(f"#reason-resolved-{followup.pk}").fill("phoned the customer")
    await row.get_by_role("button", name="Mark resolved").click()

    assert await saga_env.result(order) == "completed"
    await expect(heading).to_have_text("Open: 0")
    await expect(row).to_contain_text("resolved by staff")
    await expect(row).to_contain_text("Reason: “phoned the customer”")
    await expect(row).not_to_contain_text("resolved: resolved")
