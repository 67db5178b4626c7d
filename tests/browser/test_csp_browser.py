"""The Content-Security-Policy holds on every main page: each is loaded in Chromium with
the policy enforced, its live sockets connected, and no violation may be reported (the
browser's securitypolicyviolation events and its console). Staff pages as an operator
(who sees the most buttons), the customer's page anonymously, the admin as an admin."""

import asyncio

import pytest
from asgiref.sync import sync_to_async

from ..test_ops_data import followup_order, stuck_order

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    # whitenoise serves static files through a sync iterator, which Django's ASGI handler notes
    pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators"),
]

# Recorded from the first byte of every page: what the policy blocked.
VIOLATIONS_JS = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"} at ${e.sourceFile}:${e.lineNumber}`);
});
"""


async def violations_on(page, path: str, *, settle_seconds: float = 0.7) -> list[str]:
    console = []
    page.on("console", lambda msg: console.append(msg.text) if "Content Security Policy" in msg.text else None)
    response = await page.goto(path)
    assert response.status == 200, f"{path}: {response.status}"
    assert "script-src 'self'" in response.headers.get("content-security-policy", ""), f"{path}: no policy"
    await page.wait_for_load_state("load")
    await asyncio.sleep(settle_seconds)  # sockets open and send their first frames; htmx settles
    return [*await page.evaluate("window.__csp"), *console]


@pytest.fixture
def shop(db):
    order = stuck_order()
    followup = followup_order()
    return {"order": order, "followup": followup}


async def test_every_main_page_loads_without_a_policy_violation(pages, staff_user, shop):
    operator = await sync_to_async(staff_user)("operator")
    admin = await sync_to_async(staff_user)("admin")
    order = shop["order"]
    staff_paths = ["/", "/orders/", f"/orders/{order.pk}/", "/orders/new/", "/ops/stuck/", "/ops/followups/",
                   "/ops/audit/", "/ops/background/flags/", "/ops/background/bulk/", "/ops/background/reconciliation/"]
    admin_paths = ["/admin/", "/admin/orders/order/", f"/admin/orders/order/{order.pk}/change/"]
    public_paths = ["/accounts/login/", f"/status/{order.public_token}/"]

    found = {}
    for user, paths in ((operator, staff_paths), (admin, admin_paths), (None, public_paths)):
        context = await pages.context(user)
        await context.add_init_script(VIOLATIONS_JS)
        page = await context.new_page()
        for path in paths:
            if problems := await violations_on(page, path):
                found[path] = problems
    assert not found, "Content-Security-Policy violations:\n" + "\n".join(f"{p}: {v}" for p, v in found.items())


async def test_the_stuck_queues_select_all_and_the_live_sockets_work_under_the_policy(pages, staff_user, shop):
    # The handlers that were inline (select all, live rows) now live in static/js/pages.js.
    operator = await sync_to_async(staff_user)("operator")
    await sync_to_async(stuck_order)()
    context = await pages.context(operator)
    await context.add_init_script(VIOLATIONS_JS)
    page = await context.new_page()
    assert await violations_on(page, "/ops/stuck/") == []
    boxes = page.locator("input[name=order_ids]")
    assert await boxes.count() >= 2
    await page.locator("#select-all").check()
    for i in range(await boxes.count()):
        assert await boxes.nth(i).is_checked()
    assert await page.evaluate("window.__csp") == []


async def test_a_violation_would_be_seen(pages, staff_user, shop):
    # The detector itself: an inline script is blocked and reported.
    context = await pages.context()
    await context.add_init_script(VIOLATIONS_JS)
    page = await context.new_page()
    assert await violations_on(page, "/accounts/login/") == []
    await page.evaluate("""() => { const s = document.createElement('script'); s.textContent = 'window.__ran = 1';
                                   document.body.appendChild(s); }""")
    await asyncio.sleep(0.3)
    assert await page.evaluate("window.__ran") is None
    assert any("script-src" in v for v in await page.evaluate("window.__csp"))
