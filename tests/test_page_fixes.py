"""Page fixes of issue 11 that a test without a browser can see (browser ones:
tests/browser/test_page_fixes_*.py). Orders are put into saga states by the services the
saga's activities call (tests/saga_states.py)."""

import html as html_lib
from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from orders.models import FollowUp, OperatorAction, SagaEvent
from orders.selectors.timeline import saga_timeline

from .factories import make_order, make_product
from .saga_states import order_advanced, order_compensated, order_completed, order_stuck
from .test_ops_data import followup_order, resolved_followup

pytestmark = pytest.mark.django_db


def page(client, url: str) -> str:
    return html_lib.unescape(client.get(url).content.decode())


# --- follow-up queue ----------------------------------------------------------------------


def test_resolved_followup_badge_says_how_and_why(client_as, staff_user):
    followup = resolved_followup()
    OperatorAction.objects.create(order=followup.order, action="resolved", actor=staff_user("support"),
                                  reason="phoned the customer", outcome="applied")
    body = page(client_as("support"), reverse("ops:followups") + "?view=resolved")
    assert "resolved: resolved" not in body
    assert "resolved by staff" in body and "Reason: “phoned the customer”" in body


def test_followup_row_that_closed_tells_the_header_to_recount(client_as):
    followup = followup_order()
    client = client_as("support")
    row = client.get(reverse("ops:followup_row", args=[followup.pk]), HTTP_HX_REQUEST="true")
    assert "HX-Trigger" not in row  # still open: the count has not moved
    FollowUp.objects.filter(pk=followup.pk).update(state=FollowUp.State.RESOLVED, resolution="resent",
                                                   resolved_at=timezone.now())
    row = client.get(reverse("ops:followup_row", args=[followup.pk]), HTTP_HX_REQUEST="true")
    assert row["HX-Trigger"] == "followup-closed" and "closed: notification resent" in row.content.decode()
    body = page(client, reverse("ops:followups"))
    assert 'hx-trigger="followup-closed from:body"' in body and "Open: 0" in body


# --- the timeline: attempts, durations, states ------------------------------------------------


def events_at(order, rows: list[tuple]) -> None:
    """(step, kind, attempt, seconds after the first) rows, stamped at those times."""
    start = timezone.now() - timedelta(minutes=10)
    for step, kind, attempt, seconds in rows:
        event = SagaEvent.objects.create(order=order, step=step, kind=kind, detail=f"{kind} {attempt}", attempt=attempt)
        SagaEvent.objects.filter(pk=event.pk).update(created_at=start + timedelta(seconds=seconds))


STUCK_THEN_RETRIED = [
    ("charge", "started", 1, 0), ("charge", "failed", 1, 1), ("charge", "retrying", 2, 2), ("charge", "failed", 2, 3),
    ("charge", "retrying", 3, 4), ("charge", "failed", 3, 5), ("charge", "stuck", 1, 5),
    # 60 s waiting for an operator, then their retry
    ("charge", "signal", 1, 65),
]


@pytest.mark.parametrize("retried_attempt", [4, 1], ids=["numbered-across-runs", "numbered-from-1"])
def test_a_retried_step_counts_the_attempt_that_succeeded_and_not_the_wait(retried_attempt):
    order = make_order(start_saga=False)
    events_at(order, STUCK_THEN_RETRIED + [("charge", "retrying" if retried_attempt > 1 else "started",
                                            retried_attempt, 65), ("charge", "succeeded", retried_attempt, 66)])
    order.saga_status = "running"
    charge = saga_timeline(order).step_track("charge")
    assert charge.state == "succeeded"
    assert charge.attempts == 4
    assert charge.duration_ms == 6000  # 5 s before it got stuck, 1 s after the retry; not the 60 s wait


def test_a_stuck_step_the_operator_rolled_back_reads_failed_not_waiting(client_as):
    order = make_order(start_saga=False)
    order_advanced(order, through="reserve")
    order_stuck(order, step="charge", error="payment unavailable: timed out")
    order.refresh_from_db()
    assert saga_timeline(order).step_track("charge").state == "stuck"
    body = page(client_as("viewer"), reverse("orders:detail", args=[order.pk]))
    assert 'class="last-error"' in body  # waiting for an operator: the error is news
    from .saga_states import _compensate, order_finished
    _compensate(order, ("validate", "reserve"), failing_once={})
    order_finished(order, saga_status="compensated", detail="compensated by an operator")
    order.refresh_from_db()
    assert saga_timeline(order).step_track("charge").state == "failed"
    body = page(client_as("viewer"), reverse("orders:detail", args=[order.pk]))
    assert "stuck: waiting for an operator" not in body
    assert 'class="last-error"' not in body  # the box only while the saga waits


def test_completed_order_labelled_badges_no_current_step_no_last_error(client_as):
    order = make_order(start_saga=False)
    order_completed(order)
    order.__class__.objects.filter(pk=order.pk).update(last_error="payment unavailable: waiting for an operator")
    body = page(client_as("viewer"), reverse("orders:detail", args=[order.pk]))
    summary = body[body.index(f'id="order-summary-{order.pk}"'):body.index("</section>", body.index("order-summary"))]
    text = " ".join(html_lib.unescape(__import__("re").sub(r"<[^>]+>", " ", summary)).split())
    assert "Order: Completed" in text and "Saga: completed" in text
    assert "Current step" not in text and "Notify customer" not in text
    assert "Last error" not in text


def test_nothing_undone_is_not_compensated(client_as):
    order = make_order(start_saga=False)
    order_compensated(order, failed_step="reserve", error="Out of stock")  # nothing was done before it
    order.refresh_from_db()
    body = page(client_as("viewer"), reverse("orders:detail", args=[order.pk]))
    summary = body[body.index(f'id="order-summary-{order.pk}"'):]
    assert "failed, nothing to undo" in summary[:2000]
    assert ">compensated<" not in summary[:2000].replace("Saga:</span> ", ">")


def test_refused_shipment_reads_refused_by_the_carrier(client_as):
    from orders.errors import ShippingRejected
    from orders.services import shipping
    from orders.services.saga import saga_step_failed, saga_step_started
    from .saga_states import _compensate, order_finished

    order = make_order(start_saga=False, fault_plan={"shipping": "fail"})
    order_advanced(order, through="confirm")
    key = f"{order.workflow_id}:ship"
    saga_step_started(order_id=order.pk, step="ship", step_key=key, attempt=1, compensation=False)
    with pytest.raises(ShippingRejected) as refused:
        shipping.shipment_arrange(order_id=order.pk, idempotency_key=key, attempt=1, resume_after=0,
                                  on_parcel_booked=lambda n: None)
    saga_step_failed(order_id=order.pk, step="ship", step_key=key, attempt=1, error=str(refused.value))
    _compensate(order, ("reserve", "charge", "confirm", "ship"), failing_once={})
    order_finished(order, saga_status="compensated", detail=str(refused.value))
    order.refresh_from_db()
    timeline = saga_timeline(order)
    assert timeline.step_track("ship").state == "refused"
    undo_ship = next(t for t in timeline.compensations if t.step == "ship")
    assert undo_ship.state == "nothing_to_undo"
    body = page(client_as("viewer"), reverse("orders:detail", args=[order.pk]))
    ship = body[body.index(f'id="saga-{order.pk}-step-ship-head"'):]
    assert "refused by the carrier" in ship[:1500]
    text = " ".join(__import__("re").sub(r"<[^>]+>", " ", body).split())
    assert "Cancelled shipment (0 parcel(s) booked)" not in text and "Cancelled 0 of" not in text
    assert "refused by the carrier no parcel was booked: the carrier refused the shipment" in text
    assert "nothing to undo" in text


# --- the shop's time zone, date format and public address --------------------------------------


def test_dates_are_typed_the_shops_way_and_times_shown_in_its_zone(client_as, settings):
    from ops.order_pages.forms import OrderFilterForm

    assert settings.TIME_ZONE == settings.SHOP_TIME_ZONE == "Europe/Berlin"  # the default
    form = OrderFilterForm({"date_from": "24.12.2026", "date_to": "2026-12-31"})
    assert form.is_valid(), form.errors
    assert str(form.cleaned_data["date_from"]) == "2026-12-24" and str(form.cleaned_data["date_to"]) == "2026-12-31"
    form = OrderFilterForm({"date_from": "12/24/2026"})
    assert not form.is_valid() and form.errors["date_from"] == ["Enter a date as dd.mm.yyyy."]
    body = client_as("viewer").get(reverse("orders:list")).content.decode()
    assert 'placeholder="dd.mm.yyyy"' in body and 'type="date"' not in body

    order = make_order(start_saga=False)
    order.__class__.objects.filter(pk=order.pk).update(
        created_at=datetime(2026, 7, 1, 10, 0, tzinfo=UTC))
    body = client_as("viewer").get(reverse("orders:detail", args=[order.pk])).content.decode()
    assert "2026-07-01 12:00:00" in body  # 10:00 UTC is noon in Berlin in summer


def test_bad_shop_settings_fail_with_a_clear_message():
    import os
    import subprocess
    import sys

    for env, message in [({"SHOP_TIME_ZONE": "Mars/Olympus"}, "is not a time zone"),
                         ({"SHOP_DATE_INPUT_FORMAT": "mm/dd/yyyy"}, "use one of dd.mm.yyyy, yyyy-mm-dd"),
                         ({"PORT": "eighty"}, "is not a port number")]:
        result = subprocess.run([sys.executable, "-c", "import ordersite.settings"], capture_output=True, text=True,
                                env={**os.environ, **env}, timeout=60)
        assert result.returncode != 0 and message in result.stderr


def test_email_links_follow_the_port(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PUBLIC_BASE_URL"}
    code = "import ordersite.settings as s; print(s.PUBLIC_BASE_URL)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**env, "PORT": "8123"})
    assert out.stdout.strip() == "http://localhost:8123", out.stderr
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**env, "PORT": "8123", "PUBLIC_BASE_URL": "https://shop.example"})
    assert out.stdout.strip() == "https://shop.example"


# --- the dashboard ------------------------------------------------------------------------------


def test_dashboard_counters_say_how_they_differ_and_activity_skips_empty_starts(client_as):
    from .test_ops_data import stuck_order as queue_stuck_order

    order = queue_stuck_order()
    body = page(client_as("viewer"), reverse("ops:home"))
    assert "the saga waits for an operator to retry or compensate" in body
    assert "the customer could not be told" in body
    assert "silent for too long (found by the sweeper)" in body
    empty_starts = [e.pk for e in order.events.all() if e.kind == "started" and not e.detail]
    assert empty_starts  # the saga recorded some
    for pk in empty_starts:
        assert f'id="ops-event-{pk}"' not in body
    assert f'id="ops-event-{order.events.order_by("-id").first().pk}"' in body


# --- the admin ----------------------------------------------------------------------------------


def test_admin_inline_rows_are_titled_by_product_and_the_list_labels_both_states(client_as):
    order = make_order(start_saga=False, products=[(make_product(name="Widget"), 2)])
    client = client_as("admin")
    body = page(client, reverse("admin:orders_order_change", args=[order.pk]))
    assert "2 × Widget" in body and "OrderLine object" not in body
    body = page(client, reverse("admin:orders_order_changelist"))
    assert "Order: Placed<br>Saga: pending" in body
    assert 'class="admin-email">ada@example.com<' in body


def test_sandbox_outage_switch_accepts_only_known_services(client_as):
    from sandbox.models import SandboxOutage

    client = client_as("admin")
    response = client.post(reverse("admin:sandbox_sandboxoutage_add"), {"service": "payments-typo", "active": "on"})
    assert response.status_code == 200 and "Unknown sandbox service" in response.content.decode()
    assert not SandboxOutage.objects.exists()


def test_completed_order_has_no_current_step_in_the_list(client_as):
    order = make_order(start_saga=False)
    order_completed(order)
    body = page(client_as("viewer"), reverse("orders:list"))
    row = body[body.index(f'id="order-row-{order.pk}"'):]
    row = row[:row.index("</tr>")]
    assert "Notify customer" not in row and "<td>—</td>" in row
