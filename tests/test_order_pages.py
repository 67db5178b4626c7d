"""The staff order pages: list, detail and the operator action endpoint (the create form:
test_order_create.py).

Orders are built with the real services (start_saga=False: no Temporal needed) and put into
saga states by the services the saga's activities call (tests/saga_states.py).
"""

import html
import re
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from orders.models import OperatorAction, Order, Payment, Reservation, SagaEvent
from orders.selectors.timeline import saga_timeline

from .factories import make_order, make_product
from .saga_states import (
    order_advanced, order_compensated, order_completed, order_delivered, order_needs_followup, order_running, order_stuck,
)

pytestmark = pytest.mark.django_db

# --- helpers: put an order where a saga would have left it --------------------------------


def running_order(*, step="charge", **kwargs) -> Order:
    order = make_order(start_saga=False, **kwargs)
    order_running(order, step=step)
    order.refresh_from_db()
    return order


def events_add(order: Order, events: list[tuple]) -> None:
    """(step, kind, detail[, attempt[, operator action]]) rows, as the saga's activities record them."""
    SagaEvent.objects.bulk_create(
        SagaEvent(order=order, step=e[0], kind=e[1], detail=e[2], attempt=e[3] if len(e) > 3 else 1,
                  operator_action=e[4] if len(e) > 4 else None)
        for e in events
    )


def stuck_order(**kwargs) -> Order:
    order = make_order(start_saga=False, **kwargs)
    order_advanced(order, through="reserve")
    order_stuck(order, step="charge", error="payment unavailable: timed out")
    order.refresh_from_db()
    return order


def followup_order() -> Order:
    order = make_order(start_saga=False)
    order_needs_followup(order, reason="Could not notify the customer: mailer down")
    order.refresh_from_db()
    return order


def action_buttons(html: str) -> set[str]:
    return set(re.findall(r'hx-post="/orders/\d+/actions/(\w+)/"', html))


# --- who may see what ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["orders:list", "orders:create"])
def test_anonymous_is_sent_to_login(client, name):
    response = client.get(reverse(name))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_anonymous_cannot_see_detail_or_act(client):
    order = stuck_order()
    assert client.get(reverse("orders:detail", args=[order.pk]))["Location"].startswith(reverse("login"))
    response = client.post(reverse("orders:action", args=[order.pk, "retry"]), {"reason": "x"})
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert not OperatorAction.objects.exists()


def test_signed_in_user_without_a_role_gets_403(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("nobody", password="pw-123456"))
    assert client.get(reverse("orders:list")).status_code == 403


def test_viewer_sees_list_and_detail_but_no_buttons(client_as):
    order = stuck_order()
    client = client_as("viewer")
    assert order.number in client.get(reverse("orders:list")).content.decode()
    html = client.get(reverse("orders:detail", args=[order.pk])).content.decode()
    assert order.number in html and f'id="saga-{order.pk}"' in html
    assert action_buttons(html) == set()
    assert "needs the operator or support role" in html
    assert "New order" not in html
    assert client.get(reverse("orders:create")).status_code == 403


def test_viewer_forged_action_post_is_403_and_writes_nothing(client_as):
    order = stuck_order()
    client = client_as("viewer")
    response = client.post(reverse("orders:action", args=[order.pk, "retry"]), {"reason": "let me"})
    assert response.status_code == 403
    assert "not allowed" in response.content.decode()
    response = client.post(reverse("orders:action", args=[order.pk, "compensate"]), {"reason": ""},
                           HTTP_HX_REQUEST="true", HTTP_HX_TARGET=f"order-actions-{order.pk}")
    assert response.status_code == 403
    assert "not allowed" in response.content.decode()
    assert not OperatorAction.objects.exists()
    order.refresh_from_db()
    assert order.saga_status == "stuck"


def test_support_sees_followup_buttons_only(client_as):
    followup, stuck = followup_order(), stuck_order()
    client = client_as("support")
    assert action_buttons(client.get(reverse("orders:detail", args=[followup.pk])).content.decode()) == {
        "resend", "resolved"}
    assert action_buttons(client.get(reverse("orders:detail", args=[stuck.pk])).content.decode()) == set()
    assert client.get(reverse("orders:create")).status_code == 403
    response = client.post(reverse("orders:action", args=[stuck.pk, "retry"]), {"reason": ""})
    assert response.status_code == 403
    assert not OperatorAction.objects.exists()


@pytest.mark.parametrize("role", ["operator", "admin"])
def test_operator_and_admin_see_the_buttons_that_fit(client_as, role):
    stuck, running, followup = stuck_order(), running_order(step="reserve"), followup_order()
    done = make_order(start_saga=False)
    order_completed(done)
    client = client_as(role)
    assert action_buttons(client.get(reverse("orders:detail", args=[stuck.pk])).content.decode()) == {
        "retry", "compensate", "cancel"}
    assert action_buttons(client.get(reverse("orders:detail", args=[running.pk])).content.decode()) == {"cancel"}
    assert action_buttons(client.get(reverse("orders:detail", args=[followup.pk])).content.decode()) == {
        "resend", "resolved"}
    # A completed order's parcel is on its way: only the delivery's actions fit (issue 8).
    html = client.get(reverse("orders:detail", args=[done.pk])).content.decode()
    assert action_buttons(html) == {"mark_delivered", "lost_refund", "lost_reship"}
    delivered = make_order(start_saga=False)
    order_delivered(delivered)
    html = client.get(reverse("orders:detail", args=[delivered.pk])).content.decode()
    assert action_buttons(html) == set() and "No operator action fits" in html
    assert client.get(reverse("orders:create")).status_code == 200


def test_buttons_carry_a_confirmation_that_says_what_happens(client_as):
    order = stuck_order()
    html = client_as("operator").get(reverse("orders:detail", args=[order.pk])).content.decode()
    assert f'hx-confirm="Retry the charge payment step of {order.number}? The saga runs the failed step again."' in html
    assert "roll back? the order ends as failed." in html.lower()
    assert 'name="reason"' in html


# --- the list -------------------------------------------------------------------------------


def test_list_filters_search_and_sort(client_as):
    cheap = running_order(products=[(make_product(price="5.00"), 1)], email="cheap@example.com")
    dear = running_order(products=[(make_product(price="900.00"), 1)], email="dear@example.com")
    stuck = stuck_order(email="stuck@example.com")
    followup = followup_order()
    client = client_as("viewer")

    def numbers(query: str) -> list[str]:
        html = client.get(reverse("orders:list") + query).content.decode()
        return re.findall(r">(SO-\d{6})</a>", html)

    assert set(numbers("")) == {o.number for o in (cheap, dear, stuck, followup)}
    assert numbers("?stuck=on") == [stuck.number]
    assert numbers("?needs_followup=on") == [followup.number]
    assert set(numbers("?stuck=on&needs_followup=on")) == {stuck.number, followup.number}
    assert numbers("?step=notify") == [followup.number]
    assert numbers("?saga_status=stuck") == [stuck.number]
    assert numbers(f"?q={dear.number}") == [dear.number]
    assert numbers(f"?q={dear.number.lower().replace('so-', '')}") == [dear.number]
    assert numbers("?q=dear@example.com") == [dear.number]
    assert numbers("?q=DEAR@example") == [dear.number]
    assert set(numbers("?q=lovelace")) == {o.number for o in (cheap, dear, stuck, followup)}
    assert numbers("?sort=-total")[0] == dear.number
    assert numbers("?sort=total")[0] == cheap.number
    assert numbers("?status=completed") == []

    Order.objects.filter(pk=cheap.pk).update(created_at=timezone.now() - timedelta(days=10))
    today = timezone.now().date()
    assert cheap.number not in numbers(f"?date_from={today - timedelta(days=1)}")
    assert numbers(f"?date_to={today - timedelta(days=5)}") == [cheap.number]


def test_list_bad_filters_are_reported_not_500(client_as):
    running_order()
    client = client_as("viewer")
    response = client.get(reverse("orders:list") + "?date_from=yesterday&status=bogus&page=abc&sort=nope")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Some filters were not applied" in html and "Enter a date as dd.mm.yyyy." in html
    response = client.get(reverse("orders:list") + "?date_from=2030-01-02&date_to=2030-01-01")
    assert "The end date is before the start date." in response.content.decode()


def test_list_pages_without_overlap(client_as):
    product = make_product(stock=1000)
    orders = [running_order(products=[(product, 1)]) for _ in range(55)]
    client = client_as("viewer")
    first = client.get(reverse("orders:list")).content.decode()
    next_link = html.unescape(re.search(r'href="([^"]+)" rel="next"', first).group(1))
    second = client.get(reverse("orders:list") + next_link).content.decode()
    on_first = set(re.findall(r">(SO-\d{6})</a>", first))
    on_second = set(re.findall(r">(SO-\d{6})</a>", second))
    assert len(on_first) == 50 and len(on_second) == 5 and not on_first & on_second
    assert on_first | on_second == {o.number for o in orders}
    assert "Showing 1–50 of 55 orders" in first and 'rel="next"' in first
    assert "Showing 51–55 of 55 orders" in second and 'rel="prev"' in second


def test_list_count_stops_at_the_cap(client_as, monkeypatch):
    monkeypatch.setattr("ops.order_pages.selectors.COUNT_CAP", 20)
    product = make_product(stock=1000)
    for _ in range(60):
        running_order(products=[(product, 1)])
    html = client_as("viewer").get(reverse("orders:list")).content.decode()
    assert "Showing 1–50 of more than 20 orders." in html and 'rel="next"' in html


def test_list_htmx_filter_renders_only_the_table(client_as):
    running_order()
    client = client_as("viewer")
    response = client.get(reverse("orders:list") + "?stuck=on", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="order-table")
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="order-table"')
    assert "<html" not in html and "order-filters" not in html
    full = client.get(reverse("orders:list")).content.decode()
    assert 'ws-connect="/ws/orders/"' in full and 'hx-ext="ws"' in full and 'id="order-filters"' in full
    # The table's rows are not out-of-band when the table itself is the response.
    assert "hx-swap-oob" not in client.get(reverse("orders:list"), HTTP_HX_REQUEST="true",
                                           HTTP_HX_TARGET="order-table").content.decode()


def _count_list_queries(client) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(reverse("orders:list")).status_code == 200
    return len(queries)


def test_list_query_count_does_not_grow_with_orders(client_as):
    client = client_as("viewer")
    product = make_product(stock=1000)
    for _ in range(5):
        running_order(products=[(product, 1)])
    few = _count_list_queries(client)
    for _ in range(45):
        running_order(products=[(product, 1)])
    many = _count_list_queries(client)
    for _ in range(30):  # now more than a page: the capped count runs too
        running_order(products=[(product, 1)])
    more_than_a_page = _count_list_queries(client)
    assert few == many
    assert more_than_a_page == few + 1


# --- the detail -----------------------------------------------------------------------------


def _count_detail_queries(client, order) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(reverse("orders:detail", args=[order.pk])).status_code == 200
    return len(queries)


def test_detail_query_count_does_not_grow_with_events_or_rows(client_as):
    client = client_as("operator")
    order = running_order(products=[(make_product(), 1), (make_product(), 2)])  # validated, charging: 2 events
    few = _count_detail_queries(client, order)
    events_add(order, [("charge", "failed", f"attempt {i}", i) for i in range(38)])
    Payment.objects.create(order=order, kind="charge", amount=Decimal(10), currency="EUR",
                           idempotency_key="k1", gateway_reference="r1")
    many = _count_detail_queries(client, order)
    assert SagaEvent.objects.filter(order=order).count() == 40
    assert few == many


def test_detail_shows_ledger_timeline_compensation_and_temporal_link(client_as, settings):
    settings.TEMPORAL_UI_URL = "http://temporal.example:8233/"
    settings.TEMPORAL_NAMESPACE = "shop"
    order = make_order(start_saga=False)
    order_compensated(order, failed_step="confirm", error="Warehouse system rejected the stock confirmation",
                      failing_once={"reserve": "db busy"})
    order.refresh_from_db()
    charge, refund = order.payments.get(kind="charge"), order.payments.get(kind="refund")
    assert order.reservations.get().state == Reservation.State.RELEASED
    html = client_as("viewer").get(reverse("orders:detail", args=[order.pk])).content.decode()
    assert f'href="http://temporal.example:8233/namespaces/shop/workflows/{order.workflow_id}"' in html
    assert charge.gateway_reference in html and refund.gateway_reference in html and "net 0.00 EUR" in html
    assert "Released" in html or "released" in html
    # Compensations are their own track, in the order they ran.
    compensation = html[html.index('class="compensation"'):]
    assert compensation.index("Refund payment") < compensation.index("Release reservation")
    assert "Compensation failed: db busy" in compensation
    assert f'id="saga-{order.pk}"' in html and f'id="order-actions-{order.pk}"' in html
    assert f'id="order-summary-{order.pk}"' in html

    timeline = saga_timeline(order)
    states = {s.step: s.state for s in timeline.steps}
    assert states == {"validate": "succeeded", "reserve": "compensated", "charge": "compensated",
                      "confirm": "failed", "ship": "skipped", "notify": "skipped"}
    assert [(c.step, c.state, c.attempts) for c in timeline.compensations] == [
        ("charge", "compensated", 1), ("reserve", "compensated", 2)]
    assert [e.kind for e in timeline.saga_events] == ["finished"]


def test_timeline_names_who_sent_signals(client_as, staff_user):
    order = stuck_order()
    alice = staff_user("operator", username="alice")
    action = OperatorAction.objects.create(order=order, action="retry", actor=alice, reason="gateway is back",
                                           outcome="applied")
    ignored = OperatorAction.objects.create(order=order, action="compensate", actor=alice, outcome="ignored",
                                            outcome_detail="compensate ignored: the saga is not stuck")
    events_add(order, [("charge", "signal", f"retry requested (action #{action.pk}): gateway is back", 1, action),
                       ("charge", "ignored", ignored.outcome_detail, 1, ignored)])
    timeline = saga_timeline(order)
    charge = next(s for s in timeline.steps if s.step == "charge")
    operator_events = [(e.kind, e.actor, e.reason) for e in charge.events if e.operator]
    assert operator_events == [("signal", "alice", "gateway is back"), ("ignored", "alice", "")]
    html = client_as("viewer").get(reverse("orders:detail", args=[order.pk])).content.decode()
    assert "by alice" in html and "gateway is back" in html


def test_unknown_order_is_404(client_as):
    assert client_as("viewer").get(reverse("orders:detail", args=[999999])).status_code == 404


# --- the action endpoint ------------------------------------------------------------------


def test_action_that_does_not_fit_shows_why(client_as):
    order = running_order(step="reserve")  # running, not stuck
    client = client_as("operator")
    response = client.post(reverse("orders:action", args=[order.pk, "retry"]), {"reason": "try"}, follow=True)
    assert response.status_code == 200
    assert f"Order {order.number} is not stuck" in response.content.decode()
    response = client.post(reverse("orders:action", args=[order.pk, "retry"]), {"reason": "try"},
                           HTTP_HX_REQUEST="true", HTTP_HX_TARGET=f"order-actions-{order.pk}")
    html = response.content.decode()
    assert response.status_code == 200 and "is not stuck" in html and f'id="order-actions-{order.pk}"' in html
    assert action_buttons(html) == {"cancel"}
    # From another page (a queue row), htmx gets a small result partial.
    response = client.post(reverse("orders:action", args=[order.pk, "resend"]), {},
                           HTTP_HX_REQUEST="true", HTTP_HX_TARGET="queue-row-1")
    assert f'id="action-result-{order.pk}"' in response.content.decode()
    assert "has no open follow-up" in response.content.decode()
    assert not OperatorAction.objects.exists()


def test_action_endpoint_rejects_unknown_actions_orders_and_get(client_as):
    order = stuck_order()
    client = client_as("operator")
    assert client.post(reverse("orders:action", args=[order.pk, "explode"])).status_code == 404
    assert client.post(reverse("orders:action", args=[999999, "retry"])).status_code == 404
    assert client.get(reverse("orders:action", args=[order.pk, "retry"])).status_code == 405
    response = client.post(reverse("orders:action", args=[order.pk, "retry"]), {"reason": "x" * 2001},
                           HTTP_HX_REQUEST="true", HTTP_HX_TARGET=f"order-actions-{order.pk}")
    assert response.status_code == 400 and "under 2000 characters" in response.content.decode()
    assert not OperatorAction.objects.exists()


def test_action_redirects_to_a_safe_next_only(client_as, settings):
    # No Temporal here: the audit row is written, the signal fails fast and the page says so.
    settings.TEMPORAL_ADDRESS = "127.0.0.1:1"
    order = stuck_order()
    client = client_as("operator")
    response = client.post(reverse("orders:action", args=[order.pk, "retry"]),
                           {"reason": "gateway back", "next": "https://evil.example/steal"})
    assert response.status_code == 302 and response["Location"] == reverse("orders:detail", args=[order.pk])
    audit = OperatorAction.objects.get()
    assert (audit.action, audit.reason, audit.outcome) == ("retry", "gateway back", "failed")
    page = client.get(response["Location"]).content.decode()
    flash = re.search(r'<ul class="messages">(.*?)</ul>', page, re.DOTALL).group(1)
    assert "is in the audit log but could not be sent" in flash and "tonic" not in flash

    response = client.post(reverse("orders:action", args=[order.pk, "compensate"]),
                           {"reason": "", "next": "/ops/stuck/?page=2"})
    assert response["Location"] == "/ops/stuck/?page=2"


def test_unique_email_search_uses_the_given_case(client_as):
    email = f"Mixed.{uuid.uuid4().hex[:6]}@Example.com"
    order = running_order(email=email)
    html = client_as("viewer").get(reverse("orders:list"), {"q": email}).content.decode()
    assert order.number in html
