"""The operations pages: dashboard, stuck queue, follow-up queue (the audit log's own
page: test_ops_audit_page.py).

Who can see them, what each role is offered, filters and pagination, and that the number
of queries does not grow with the number of rows.
"""

import html
import re

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import NoReverseMatch, reverse

from orders.models import OperatorAction

from .saga_states import order_completed
from .test_ops_data import audit_row, followup_order, placed_order, resolved_followup, shelf, stuck_order

pytestmark = pytest.mark.django_db

PAGES = ["ops:home", "ops:stuck", "ops:followups", "ops:audit"]


def bulk_url_or_none():
    try:
        return reverse("background:bulk_create")
    except NoReverseMatch:
        return None


# --- access -------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_anonymous_is_sent_to_login(client, page):
    response = client.get(reverse(page))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login") + "?next=")


@pytest.mark.parametrize("page", PAGES)
@pytest.mark.parametrize("role", ["viewer", "support", "operator", "admin"])
def test_every_staff_role_sees_every_page(client_as, page, role):
    response = client_as(role).get(reverse(page))
    assert response.status_code == 200
    # The nav names every staff page; the admin link is for admins only.
    body = response.content.decode()
    for name in ("ops:home", "ops:stuck", "ops:followups", "ops:audit"):
        assert f'href="{reverse(name)}"' in body
    assert (f'href="{reverse("admin:index")}"' in body) == (role == "admin")


@pytest.mark.parametrize("page", PAGES)
def test_signed_in_user_without_staff_permission_is_refused(client, page):
    user = get_user_model().objects.create_user("customer", password="x-123456789")
    client.force_login(user)
    assert client.get(reverse(page)).status_code == 403


@pytest.mark.parametrize("page", PAGES)
def test_pages_answer_get_only(client_as, page):
    assert client_as("admin").post(reverse(page)).status_code == 405


# --- dashboard ----------------------------------------------------------------------------


def count_in(body: str, attribute: str, value: str) -> int:
    match = re.search(rf'<tr {attribute}="{value}"><th scope="row">[^<]*</th><td class="num">(\d+)</td>', body)
    assert match, f"no {attribute}={value} row"
    return int(match.group(1))


def test_dashboard_shows_counts_and_recent_activity(client_as):
    product = shelf()
    order_completed(placed_order(product))
    stuck = stuck_order(product)
    followup_order(product)
    placed_order(product)
    body = client_as("viewer").get(reverse("ops:home")).content.decode()
    assert count_in(body, "data-saga-status", "stuck") == 1
    assert count_in(body, "data-saga-status", "needs_followup") == 1
    assert count_in(body, "data-saga-status", "pending") == 1
    # A saga waiting on a follow-up has not finished: its order is still processing.
    assert count_in(body, "data-status", "processing") == 2
    assert count_in(body, "data-status", "completed") == 1
    assert count_in(body, "data-status", "placed") == 1
    assert re.search(r'data-count="stuck">1<', body) and re.search(r'data-count="followups">1<', body)
    assert re.search(r'data-count="orders">4<', body)
    # The latest event first, linked to its order's staff page.
    latest = stuck.events.order_by("-id").first()
    assert f'id="ops-event-{latest.pk}"' in body
    assert f'href="{reverse("orders:detail", args=[stuck.pk])}"' in body
    # The page opens the live socket, and the partials it replaces carry stable ids.
    assert 'ws-connect="/ws/ops/"' in body and 'id="ops-counts"' in body and 'id="ops-activity"' in body
    # Out-of-band markers are for socket messages only.
    assert "hx-swap-oob" not in body
    # The stalled-saga sweeper's card, on its own socket.
    assert 'id="stall-flags"' in body and 'ws-connect="/ws/ops/background/flags/"' in body


def test_recent_activity_is_limited_to_the_latest_twenty(client_as):
    product = shelf()
    orders = [stuck_order(product, failed=4) for _ in range(5)]  # 11 events each
    body = client_as("viewer").get(reverse("ops:home")).content.decode()
    shown = re.findall(r'id="ops-event-(\d+)"', body)
    assert len(shown) == 20
    newest = sorted((e.pk for o in orders for e in o.events.all() if e.detail or e.kind != "started"), reverse=True)[:20]
    assert [int(pk) for pk in shown] == newest


# --- stuck queue -----------------------------------------------------------------------------


def test_stuck_queue_lists_stuck_orders_with_their_step_error_age_and_attempts(client_as):
    product = shelf()
    old = stuck_order(product, step="charge", failed=5, error="Gateway timeout", minutes_ago=90)
    new = stuck_order(product, step="ship", failed=2, error="Carrier down", minutes_ago=3, email="bob@example.com")
    followup_order(product)  # not stuck: not listed
    response = client_as("viewer").get(reverse("ops:stuck"))
    body = response.content.decode()
    rows = re.findall(r'<tr id="stuck-(\d+)">', body)
    assert rows == [str(old.pk), str(new.pk)]  # longest stuck first
    old_row = body[body.index(f'id="stuck-{old.pk}"'):body.index(f'id="stuck-{new.pk}"')]
    assert old.number in old_row and "Ada Lovelace" in old_row and "ada@example.com" in old_row
    assert "Charge payment" in old_row and "Gateway timeout" in old_row
    assert "1\xa0hour, 30\xa0minutes ago" in old_row
    assert '<td class="num">5</td>' in old_row
    assert "2 stuck sagas" in body
    # The step counts link to the filtered queue.
    assert 'href="?step=charge"' in body and "Charge payment: 1" in body and "Arrange shipping: 1" in body


def test_failed_attempts_count_only_the_current_step_over_every_round(client_as):
    from orders.models import SagaEvent

    order = stuck_order(step="charge", failed=3)
    SagaEvent.objects.create(order=order, step="reserve", kind="failed", detail="earlier hiccup")
    # An operator retried once already and the step failed twice more.
    SagaEvent.objects.bulk_create([SagaEvent(order=order, step="charge", kind="failed", attempt=n) for n in (1, 2)])
    body = client_as("viewer").get(reverse("ops:stuck")).content.decode()
    assert '<td class="num">5</td>' in body


def test_stuck_queue_filters_by_step(client_as):
    product = shelf()
    charge = stuck_order(product, step="charge")
    ship = stuck_order(product, step="ship")
    body = client_as("viewer").get(reverse("ops:stuck"), {"step": "ship"}).content.decode()
    assert f'id="stuck-{ship.pk}"' in body and f'id="stuck-{charge.pk}"' not in body
    assert "1 stuck saga at this step" in body


def test_stuck_queue_ignores_an_unknown_step_and_shows_the_error(client_as):
    order = stuck_order()
    response = client_as("viewer").get(reverse("ops:stuck"), {"step": "teleport"})
    assert response.status_code == 200
    assert f'id="stuck-{order.pk}"' in response.content.decode()


def test_stuck_queue_paginates(client_as):
    product = shelf()
    orders = [stuck_order(product, minutes_ago=100 - i, failed=1) for i in range(55)]
    client = client_as("viewer")
    first = client.get(reverse("ops:stuck")).content.decode()
    next_link = html.unescape(re.search(r'href="([^"]+)" rel="next"', first).group(1))
    second = client.get(reverse("ops:stuck") + next_link).content.decode()
    assert len(re.findall(r'<tr id="stuck-', first)) == 50
    assert re.findall(r'<tr id="stuck-(\d+)">', second) == [str(o.pk) for o in orders[50:]]
    assert "Page 2" in second and 'rel="next"' not in second and "55 stuck sagas" in second
    # Nonsense page numbers and cursors show a page rather than an error.
    for junk in ({"page": "x"}, {"page": 99}, {"after": "!!"}, {"before": "W10"}, {"after": "WyJ4IiwxXQ"}):
        assert client.get(reverse("ops:stuck"), junk).status_code == 200


def test_viewer_and_support_get_no_saga_controls(client_as):
    stuck_order()
    for role in ("viewer", "support"):
        body = client_as(role).get(reverse("ops:stuck")).content.decode()
        assert 'name="order_ids"' not in body and 'id="bulk-form"' not in body
        assert "/actions/retry/" not in body and "/actions/compensate/" not in body


@pytest.mark.parametrize("role", ["operator", "admin"])
def test_operators_get_retry_and_compensate_per_row_with_confirmation(client_as, role):
    order = stuck_order()
    body = client_as(role).get(reverse("ops:stuck"), {"step": "charge"}).content.decode()
    for action in ("retry", "compensate"):
        url = reverse("orders:action", args=[order.pk, action])
        form = re.search(rf'<details class="ops-action">\s*<summary>[^<]+</summary>\s*<form method="post" action="{url}">(.*?)</form>', body, re.S)
        assert form, f"no confirmable {action} form"
        assert 'name="csrfmiddlewaretoken"' in form.group(1) and 'name="reason"' in form.group(1)
        assert 'name="next" value="/ops/stuck/?step=charge"' in form.group(1)


def test_a_stuck_compensation_gets_only_a_retry_compensation_form(client_as):
    from orders.models import Order
    from orders.status import SagaStatus

    order = stuck_order()
    # The page reads the column; how the saga got there is test_saga_flow's business.
    Order.objects.filter(pk=order.pk).update(saga_status=SagaStatus.COMPENSATION_STUCK)
    body = client_as("operator").get(reverse("ops:stuck")).content.decode()
    row = body[body.index(f'id="stuck-{order.pk}"'):]
    row = row[:row.index("</tr>")]
    url = reverse("orders:action", args=[order.pk, "retry_compensation"])
    assert re.search(rf'<details class="ops-action">\s*<summary>Retry compensation…</summary>\s*<form method="post" action="{url}">', row)
    assert f'<label for="reason-retry_compensation-{order.pk}">' in row and f'id="reason-retry_compensation-{order.pk}"' in row
    assert f"Retry the stuck compensation of {order.number}</button>" in row
    assert "/actions/retry/" not in row and "/actions/compensate/" not in row


@pytest.mark.parametrize("role", ["operator", "admin"])
def test_operators_get_the_bulk_form_when_bulk_actions_exist(client_as, role):
    order = stuck_order()
    body = client_as(role).get(reverse("ops:stuck"), {"step": "charge"}).content.decode()
    bulk_url = bulk_url_or_none()
    if bulk_url is None:
        # Until the background app provides it, nothing points at a missing endpoint.
        assert 'id="bulk-form"' not in body and 'name="order_ids"' not in body
        return
    assert f'<form id="bulk-form" method="post" action="{bulk_url}">' in body
    assert f'name="order_ids" value="{order.pk}" form="bulk-form"' in body
    assert 'id="select-all"' in body
    assert '<option value="retry">' in body and '<option value="compensate">' in body
    step_form = body[body.index('id="bulk-step-form"'):]
    assert '<input type="hidden" name="step" value="charge">' in step_form


# --- follow-up queue ---------------------------------------------------------------------


def test_followup_queue_lists_open_followups_oldest_first(client_as, staff_user):
    product = shelf()
    holder = staff_user("support", username="sam")
    older = followup_order(product, reason="Mailbox full", claimed_by=holder)
    newer = followup_order(product, reason="Address bounced", email="linus@example.com")
    resolved_followup(product)
    body = client_as("viewer").get(reverse("ops:followups")).content.decode()
    assert re.findall(r'<tr id="followup-(\d+)"', body) == [str(older.pk), str(newer.pk)]
    row = body[body.index(f'id="followup-{older.pk}"'):body.index(f'id="followup-{newer.pk}"')]
    assert "Mailbox full" in row and "grace@example.com" in row and "Ada Lovelace" in row and "sam" in row
    assert "Open: 2" in body


def test_followup_queue_shows_resolved_recently(client_as):
    product = shelf()
    recent = resolved_followup(product, days_ago=2)
    old = resolved_followup(product, days_ago=30)
    still_open = followup_order(product)
    body = client_as("viewer").get(reverse("ops:followups"), {"view": "resolved"}).content.decode()
    assert f'id="followup-{recent.pk}"' in body
    assert f'id="followup-{old.pk}"' not in body and f'id="followup-{still_open.pk}"' not in body
    assert "resolved by staff" in body and "resolved: resolved" not in body


def test_viewer_sees_followups_without_controls(client_as):
    followup = followup_order()
    body = client_as("viewer").get(reverse("ops:followups")).content.decode()
    assert f'id="followup-{followup.pk}"' in body
    assert "/claim/" not in body and "/notes/" not in body and "/actions/" not in body


@pytest.mark.parametrize("role", ["support", "operator", "admin"])
def test_followup_workers_get_claim_note_resend_and_resolve(client_as, role):
    followup = followup_order()
    body = client_as(role).get(reverse("ops:followups")).content.decode()
    assert f'hx-post="{reverse("ops:followup_claim", args=[followup.pk])}"' in body
    assert f'hx-post="{reverse("ops:followup_note_add", args=[followup.pk])}"' in body
    for action in ("resend", "resolved"):
        assert f'action="{reverse("orders:action", args=[followup.order_id, action])}"' in body


def test_followup_claimed_by_someone_else_offers_no_resend_or_release(client_as, staff_user):
    followup = followup_order(claimed_by=staff_user("support", username="sam"))
    body = client_as("support").get(reverse("ops:followups")).content.decode()
    assert "Claimed by sam." in body
    assert "/actions/resend/" not in body and "/release/" not in body and "/claim/" not in body


def test_followup_queue_shows_the_last_action_asked(client_as, staff_user):
    followup = followup_order()
    audit_row(followup.order, staff_user("support"), action="resend", outcome="sent")
    body = client_as("viewer").get(reverse("ops:followups")).content.decode()
    assert "resend sent" in body


# --- queries do not grow with rows -------------------------------------------------------------


def queries_for(client, url, params=None) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url, params or {})
    assert response.status_code == 200
    return len(ctx.captured_queries)


def populate(n: int, product, actor) -> None:
    for i in range(n):
        stuck = stuck_order(product, step="charge" if i % 2 else "ship")
        audit_row(stuck, actor, action="retry", outcome="failed")
        followup = followup_order(product, claimed_by=actor if i % 2 else None)
        audit_row(followup.order, actor, action="resend", outcome="sent")
        resolved_followup(product)


@pytest.mark.parametrize(
    "page, params, most",
    [
        # The dashboard's charts add up to six grouped queries (ops/charts/selectors.py), the
        # version of the data its cached figures were drawn from three (ops/dashboard.py).
        ("ops:home", None, 19),
        # The stuck queue also reads what each order of the page holds (money, stock, parcels:
        # 4 queries per page, whatever its length) and the oldest stuck age (1).
        ("ops:stuck", None, 12),
        ("ops:stuck", {"step": "charge"}, 12),
        ("ops:followups", None, 10),
        ("ops:followups", {"view": "resolved"}, 10),
        ("ops:audit", None, 10),
        ("ops:audit", {"action": "retry", "actor": "x", "date_from": "2020-01-01"}, 10),
    ],
)
def test_query_count_does_not_grow_with_rows(client_as, staff_user, page, params, most):
    client = client_as("operator")
    actor = staff_user("support", username="x")
    product = shelf()
    populate(2, product, actor)
    small = queries_for(client, reverse(page), params)
    populate(25, product, actor)
    large = queries_for(client, reverse(page), params)
    # One query more at most: a list that fits on one page is counted from its rows, a
    # longer one by a count (ops/keyset.py); nothing per row.
    assert small <= large <= small + 1
    assert large <= most
    assert OperatorAction.objects.count() == 54


# --- the queues' action buttons, posted as each role -------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "role, allowed",
    [("viewer", set()), ("support", {"resend", "resolved"}), ("operator", {"retry", "compensate", "resend", "resolved"}),
     ("admin", {"retry", "compensate", "resend", "resolved"})],
)
def test_queue_action_buttons_are_checked_per_role(client_as, temporal_server, role, allowed):
    """The forms the queues render, posted to orders:action: refused with 403 and nothing
    written for roles that may not act; audited (then signalled) for those who may."""
    client = client_as(role)
    stuck = stuck_order()
    followup = followup_order()
    for action, order, next_url in [
        ("retry", stuck, "/ops/stuck/?step=charge"), ("compensate", stuck, "/ops/stuck/"),
        ("resend", followup.order, "/ops/followups/"), ("resolved", followup.order, "/ops/followups/"),
    ]:
        before = OperatorAction.objects.count()
        response = client.post(
            reverse("orders:action", args=[order.pk, action]), {"reason": "from the queue", "next": next_url}
        )
        if action in allowed:
            assert response.status_code == 302 and response["Location"] == next_url
            audit = OperatorAction.objects.latest("id")
            assert (audit.order_id, audit.action, audit.reason) == (order.pk, action, "from the queue")
            assert audit.actor.groups.get().name == role
        else:
            assert response.status_code == 403
            assert OperatorAction.objects.count() == before


def test_followup_queue_ignores_an_unknown_view(client_as):
    followup = followup_order()
    response = client_as("viewer").get(reverse("ops:followups"), {"view": "everything"})
    assert response.status_code == 200
    assert f'id="followup-{followup.pk}"' in response.content.decode()
