"""The Content-Security-Policy holds on every page: each is loaded in Chromium with
the policy enforced, its live sockets connected, and no violation may be reported (the
browser's securitypolicyviolation events and its console). Staff pages, generated from the
urlconf as the access matrix is, and the admin as an admin (who sees every page and button),
the login and the customer's page anonymously."""

import asyncio

import pytest
from asgiref.sync import sync_to_async
from playwright.async_api import Error as PlaywrightError

from ..test_access_matrix import fill, http_endpoints, make_objects
from ..test_ops_data import stuck_order

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


async def violations_on(page, path: str, *, settle_seconds: float = 0.7) -> list[str] | None:
    """What the policy blocked on the page at `path`; None if it is not a page (not a 200)."""
    console = []
    page.on("console", lambda msg: console.append(msg.text) if "Content Security Policy" in msg.text else None)
    try:
        response = await page.goto(path)
    except PlaywrightError:
        return None  # an empty error answer (405 to a GET) is no page to Chromium
    if response.status != 200:
        return None
    assert "script-src 'self'" in response.headers.get("content-security-policy", ""), f"{path}: no policy"
    await page.wait_for_load_state("load")
    await asyncio.sleep(settle_seconds)  # sockets open and send their first frames; htmx settles
    return [*await page.evaluate("window.__csp"), *console]


@pytest.fixture
def shop(db):
    return make_objects()


def staff_pages(objects: dict) -> list[str]:
    """Every staff URL in the urlconf that answers GET (generated, as the access matrix is), with
    objects from its fixture: a new page is checked the day it is added."""
    return sorted({fill(e.route, objects) for e in http_endpoints() if e.required is not None})


async def test_every_page_loads_without_a_policy_violation(pages, staff_user, shop):
    admin = await sync_to_async(staff_user)("admin")  # a superuser: every page, every button
    order_id = shop[("orders/", "pk")]
    admin_paths = ["/admin/", "/admin/orders/order/", f"/admin/orders/order/{order_id}/change/"]
    public_paths = ["/accounts/login/", f"/status/{shop[('status/', 'token')]}/"]

    found, loaded = {}, []
    for user, paths in ((admin, staff_pages(shop) + admin_paths), (None, public_paths)):
        context = await pages.context(user)
        await context.add_init_script(VIOLATIONS_JS)
        for path in paths:
            page = await context.new_page()  # one per path: an error answer leaves Chromium's error page
            problems = await violations_on(page, path)
            await page.close()
            if problems is None:
                continue  # POST only, or an object this fixture does not make
            loaded.append(path)
            if problems:
                found[path] = problems
    assert {"/", "/orders/", f"/orders/{order_id}/", "/orders/new/", "/ops/stuck/", "/ops/followups/",
            "/ops/audit/", "/accounts/login/", *admin_paths} <= set(loaded), loaded
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
