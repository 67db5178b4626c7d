"""The charts: the dashboard's (ops/charts/selectors.py) and the order page's saga waterfall
(orders/selectors/waterfall.py), their geometry (ops/charts/geometry.py), the pages with data
and with none, and both sockets sending them again after saga events, coalesced.

Data is built through the saga's own services (tests/saga_states.py); times are placed by
setting the clock back (the clock is outside the system), never by rewriting rows.
"""

import asyncio
import re
import time
from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from orders.live import COALESCE_SECONDS, reader_connection_close
from orders.models import Order, SagaEvent
from orders.selectors.timeline import saga_timeline_build
from orders.selectors.waterfall import (
    ATTEMPT,
    COMPENSATION,
    FOLLOWUP_WAIT,
    OPERATOR_WAIT,
    RETRY_WAIT,
    saga_waterfall,
    saga_waterfall_build,
)
from ops.charts import geometry
from ops.charts.presenters import (
    dashboard_charts_present,
    duration_text,
    failure_rate_chart,
    orders_per_hour_chart,
    waterfall_present,
)
from ops.charts.selectors import (
    dashboard_charts,
    followup_ages,
    orders_per_hour,
    step_failure_rates,
    stuck_orders_summary,
)
from ops.order_pages import consumers as order_consumers

from .factories import make_order
from .saga_states import clock_set_back, order_cancelled, order_compensated, order_completed, order_rejected
from .test_ops_data import followup_order, placed_order, record_event, shelf, stuck_order
from .websockets import open_socket, receive_until

UTC = dt_timezone.utc


# --- geometry: pure functions --------------------------------------------------------------------


@pytest.mark.parametrize("raw, step", [(0.7, 1), (1, 1), (1.2, 2), (2.1, 2.5), (3, 5), (7, 10), (12, 20), (430, 500),
                                       (0.03, 0.05), (0, 1), (-4, 1)])
def test_nice_step_is_the_smallest_round_step_covering_the_raw_one(raw, step):
    assert geometry.nice_step(raw) == pytest.approx(step)


def test_value_axis_covers_the_maximum_in_round_steps_and_counts_get_whole_steps():
    assert geometry.value_axis(37) == (40, 10)
    assert geometry.value_axis(3, integer=True) == (3, 1)  # not 0.75-unit steps for counts
    assert geometry.value_axis(0) == (4, 1)  # an all-zero chart still has an axis
    assert geometry.value_axis(100) == (100, 25)


def test_vertical_ticks_run_from_the_baseline_up_to_the_top():
    ticks = geometry.vertical_ticks(40, 10, baseline=200, height=100)
    assert [t.value for t in ticks] == [0, 10, 20, 30, 40]
    assert [t.position for t in ticks] == [200, 175, 150, 125, 100]


def test_stacked_columns_stack_each_series_from_the_baseline_scaled_to_the_top():
    columns = geometry.stacked_columns([[2, 3], [0, 5], [10, 0]], top=10, x0=40, width=300, baseline=200, height=100,
                                       gap=10)
    assert [c.total for c in columns] == [5, 5, 10]
    first = columns[0]
    assert first.x == 45 and first.width == 90  # a 100-wide slot less the gap, centred
    bottom, top = first.segments
    assert (bottom.y, bottom.height) == (180, 20)  # 2 of 10 is 20 of 100, standing on y=200
    assert (top.y, top.height) == (150, 30)  # stacked on it
    assert columns[1].segments[0].height == 0 and columns[1].segments[1].y == 150  # a zero keeps its place
    assert columns[2].segments[0].y == 100  # the top value reaches the top of the plot
    assert columns[2].x == 245
    assert geometry.stacked_columns([], top=1, x0=0, width=10, baseline=10, height=10) == []


def test_bar_width_scales_and_keeps_small_values_visible_and_caps_at_the_track():
    assert geometry.bar_width(0.5, top=1.0, width=200) == 100
    assert geometry.bar_width(0.001, top=1.0, width=200, minimum=2) == 2
    assert geometry.bar_width(0, top=1.0, width=200, minimum=2) == 0
    assert geometry.bar_width(3, top=2, width=200) == 200
    assert geometry.bar_width(1, top=0, width=200) == 0


def test_time_ticks_are_round_durations_across_the_axis():
    ticks = geometry.time_ticks(10, x0=100, width=600)
    assert [t.value for t in ticks] == [0, 2, 4, 6, 8, 10]
    assert [t.position for t in ticks] == [100, 220, 340, 460, 580, 700]
    assert [t.value for t in geometry.time_ticks(3 * 3600, x0=0, width=100)][:3] == [0, 1800, 3600]
    assert geometry.time_ticks(0, x0=5, width=100) == [geometry.Tick(0.0, 5)]


def test_time_span_places_a_span_and_keeps_an_instant_visible_within_the_axis():
    assert geometry.time_span(2, 4, total_seconds=10, x0=100, width=500) == (200, 100)
    x, w = geometry.time_span(5, 5, total_seconds=10, x0=100, width=500, minimum=2)
    assert (x, w) == (350, 2)
    x, w = geometry.time_span(10, 10, total_seconds=10, x0=100, width=500, minimum=2)
    assert x + w <= 600 and w == 2  # an instant at the very end stays on the axis


@pytest.mark.parametrize("seconds, text", [(0.35, "350 ms"), (1.25, "1.2 s"), (5, "5 s"), (245, "4 min 5 s"),
                                           (120, "2 min"), (7500, "2 h 5 min"), (3 * 86400 + 4 * 3600, "3 d 4 h")])
def test_durations_read_in_the_largest_readable_units(seconds, text):
    assert duration_text(seconds) == text


# --- the waterfall, folded from events with known times (no database) ----------------------------

T0 = datetime(2026, 1, 5, 10, 0, 0, tzinfo=UTC)


def fold(saga_status: str, events: list[tuple[float, str, str, int]], now_after: float = 100.0):
    """The waterfall of an unsaved order placed at T0 whose events came `seconds` after it."""
    order = Order(pk=1, number="SO-000001", saga_status=saga_status, created_at=T0)
    rows = [SagaEvent(pk=i, order=order, step=step, kind=kind, attempt=attempt, detail=f"{kind} {step}",
                      created_at=T0 + timedelta(seconds=seconds))
            for i, (seconds, step, kind, attempt) in enumerate(events, 1)]
    return saga_waterfall_build(saga_timeline_build(order, rows), now=T0 + timedelta(seconds=now_after))


def spans_of(waterfall, key):
    row = next(r for r in waterfall.rows if r.key == key)
    return [(s.kind, s.outcome, (s.start - T0).total_seconds(), (s.end - T0).total_seconds()) for s in row.spans]


def test_waterfall_shows_attempts_retry_waits_and_the_wait_for_an_operator():
    waterfall = fold("stuck", [
        (1, "validate", "succeeded", 1),  # a step that records only its outcome ran since the last event
        (2, "charge", "started", 1),
        (3, "charge", "failed", 1),
        (5, "charge", "retrying", 2),
        (6.5, "charge", "failed", 2),
        (7, "charge", "stuck", 0),
    ], now_after=67)
    assert [r.key for r in waterfall.rows] == ["step-validate", "step-charge"]
    assert spans_of(waterfall, "step-validate") == [(ATTEMPT, "succeeded", 0, 1)]
    assert spans_of(waterfall, "step-charge") == [
        (ATTEMPT, "failed", 2, 3),
        (RETRY_WAIT, "ended", 3, 5),
        (ATTEMPT, "failed", 5, 6.5),
        # The saga gave up instead of retrying: the operator's wait starts when it did, and
        # is still open, so it runs to now.
        (OPERATOR_WAIT, "open", 7, 67),
    ]
    assert waterfall.live and waterfall.seconds == 67
    charge = waterfall.rows[1]
    assert charge.attempts == 2


def test_an_operator_retry_ends_the_wait_and_a_finished_saga_ends_at_its_last_event():
    waterfall = fold("completed", [
        (1, "charge", "started", 1),
        (2, "charge", "failed", 1),
        (3, "charge", "stuck", 0),
        (30, "charge", "signal", 0),
        (31, "charge", "retrying", 2),
        (32, "charge", "succeeded", 2),
        (33, "notify", "failed", 1),
        (34, "notify", "followup", 0),
        (50, "notify", "signal", 0),
        (51, "", "finished", 0),
    ], now_after=500)
    assert spans_of(waterfall, "step-charge") == [
        (ATTEMPT, "failed", 1, 2), (OPERATOR_WAIT, "ended", 3, 30), (ATTEMPT, "succeeded", 31, 32),
    ]
    assert spans_of(waterfall, "step-notify") == [(ATTEMPT, "failed", 32, 33), (FOLLOWUP_WAIT, "ended", 34, 50)]
    assert not waterfall.live and waterfall.seconds == 51  # not 500: the saga is over


def test_the_delivery_trackers_rows_on_the_ship_track_are_not_more_attempts_of_the_saga():
    # After shipping succeeded, the tracker writes on the same "ship" track: the shipped
    # email (an outcome-only "succeeded"), carrier events (signals) and, after the saga has
    # finished, the delivered email and the tracking's end. None is a shipping attempt.
    waterfall = fold("completed", [
        (1, "ship", "started", 1),
        (2, "ship", "succeeded", 1),
        (2.5, "ship", "succeeded", 1),  # the shipped email, sent by the tracker
        (3, "notify", "succeeded", 1),
        (4, "", "finished", 0),
        (30, "ship", "signal", 0),  # the carrier: delivered
        (31, "ship", "succeeded", 1),  # the delivered email
        (32, "ship", "finished", 0),
    ], now_after=500)
    assert spans_of(waterfall, "step-ship") == [(ATTEMPT, "succeeded", 1, 2)]
    assert waterfall.rows[0].attempts == 1
    assert not waterfall.live and waterfall.seconds == 4  # the saga's end, not the parcel's


def test_compensations_get_their_own_rows_in_the_order_they_ran():
    waterfall = fold("compensated", [
        (1, "reserve", "succeeded", 1),
        (2, "charge", "succeeded", 1),
        (3, "confirm", "started", 1),
        (4, "confirm", "failed", 1),
        (5, "charge", "compensating", 1),
        (6, "charge", "failed", 1),  # the refund failed once...
        (7, "charge", "compensating", 2),
        (8, "charge", "compensated", 2),
        (9, "reserve", "compensated", 1),  # the release records only its outcome
        (10, "", "finished", 0),
    ])
    assert [r.key for r in waterfall.rows] == ["step-reserve", "step-charge", "step-confirm", "undo-charge",
                                               "undo-reserve"]
    # A failed compensation waits to retry like a step; no retry wait is left open at the end.
    assert spans_of(waterfall, "undo-charge") == [
        (COMPENSATION, "failed", 5, 6), (RETRY_WAIT, "ended", 6, 7), (COMPENSATION, "succeeded", 7, 8),
    ]
    assert spans_of(waterfall, "undo-reserve") == [(COMPENSATION, "succeeded", 8, 9)]
    assert spans_of(waterfall, "step-confirm") == [(ATTEMPT, "failed", 3, 4)]


def test_waterfall_view_places_spans_on_the_time_axis_and_says_what_they_are():
    view = waterfall_present(fold("stuck", [
        (0, "charge", "started", 1), (10, "charge", "failed", 1), (10, "charge", "stuck", 0),
    ], now_after=20))
    assert view.empty == ""
    (row,) = view.rows
    assert row.label == "Charge payment"
    attempt, wait = row.marks
    plot = view.width - view.label_width - 12
    assert float(attempt.x) == view.label_width and float(attempt.width) == pytest.approx(plot / 2, abs=0.1)
    assert "attempt 1: 10 s, failed (failed charge)" in attempt.title
    assert "wf-attempt wf-failed" in attempt.css
    assert "waiting for an operator: 10 s, still going" in wait.title and "wf-open" in wait.css
    assert view.description == "1 step over 20 s so far: 1 attempt, 0 retries, 1 wait for staff totalling 10 s."
    assert [t.text for t in view.ticks][:3] == ["0", "+5 s", "+10 s"]
    assert view.table_rows[0] == ["Charge payment", "Attempt 1", "0", "10 s", "failed"]


def test_waterfall_of_a_saga_that_recorded_nothing_is_a_sentence():
    view = waterfall_present(fold("pending", []))
    assert view.empty.startswith("The saga has not recorded a step yet")
    assert view.rows == []


# --- the dashboard's selectors, with known data -------------------------------------------------

@pytest.mark.django_db
def test_orders_per_hour_counts_each_hour_by_outcome_and_leaves_out_older_orders():
    product = shelf()
    now = timezone.now()
    with clock_set_back(timedelta(hours=3)):
        order_completed(placed_order(product))
        order_completed(placed_order(product))
        order_rejected(placed_order(product))
    with clock_set_back(timedelta(hours=25)):
        order_completed(placed_order(product))  # outside the 24 hours
    stuck_order(product, minutes_ago=1)
    placed_order(product)  # pending: in progress
    hours = orders_per_hour(now)
    assert len(hours) == 24
    assert hours[-1].start <= now < hours[-1].start + timedelta(hours=1)
    three_ago = next(h for h in hours if h.start <= now - timedelta(hours=3) < h.start + timedelta(hours=1))
    assert three_ago.counts["completed"] == 2 and three_ago.counts["rejected"] == 1 and three_ago.total == 3
    assert sum(h.total for h in hours) == 5
    current = hours[-1] if hours[-1].total else hours[-2]  # the stuck one may be in the previous hour
    assert sum(h.counts["stuck"] for h in hours) == 1 and sum(h.counts["running"] for h in hours) == 1
    assert current.total >= 1


@pytest.mark.django_db
def test_failure_rate_per_step_counts_the_attempts_that_ended_in_the_last_24_hours():
    product = shelf()
    stuck_order(product, step="charge", failed=3)  # validate, reserve ok; charge failed 3 times
    order_compensated(placed_order(product), failed_step="confirm", error="Out of stock")
    with clock_set_back(timedelta(hours=30)):
        stuck_order(product, step="ship", failed=2)  # too old to count
    rates = {r.step: r for r in step_failure_rates(timezone.now())}
    assert (rates["charge"].attempts, rates["charge"].failures) == (4, 3)  # the second order's charge succeeded
    assert rates["charge"].rate == pytest.approx(0.75)
    assert (rates["confirm"].attempts, rates["confirm"].failures) == (1, 1)
    assert (rates["validate"].attempts, rates["validate"].failures) == (2, 0)
    assert rates["ship"].attempts == 0 and rates["ship"].rate is None
    assert list(rates) == ["validate", "reserve", "charge", "confirm", "ship", "notify"]


@pytest.mark.django_db
def test_stuck_saga_ages_fall_in_their_buckets_with_the_oldest_and_the_steps():
    product = shelf()
    stuck_order(product, step="charge", minutes_ago=2)
    stuck_order(product, step="charge", minutes_ago=30)
    stuck_order(product, step="ship", minutes_ago=3 * 24 * 60)
    placed_order(product)  # not stuck
    now = timezone.now()
    stuck = stuck_orders_summary(now)
    assert stuck.ages.counts == {"5m": 1, "15m": 0, "1h": 1, "4h": 0, "24h": 0, "older": 1}
    assert stuck.ages.total == 3
    assert timedelta(days=3) - timedelta(minutes=1) < stuck.ages.oldest_age < timedelta(days=3, minutes=1)
    assert [(s.step, s.orders) for s in stuck.by_step] == [("charge", 2), ("ship", 1)]


@pytest.mark.django_db
def test_followup_ages_count_open_followups_only():
    product = shelf()
    with clock_set_back(timedelta(hours=2)):
        followup_order(product)
    with clock_set_back(timedelta(minutes=10)):
        followup_order(product)
    resolved = followup_order(product)
    resolved.state = "resolved"
    resolved.save(update_fields=["state"])
    ages = followup_ages(timezone.now())
    assert ages.counts == {"5m": 0, "15m": 1, "1h": 0, "4h": 1, "24h": 0, "older": 0}
    assert timedelta(hours=2) - timedelta(minutes=1) < ages.oldest_age < timedelta(hours=2, minutes=1)


@pytest.mark.django_db
def test_stuck_orders_hold_the_money_charged_and_the_stock_reserved_per_step_stuck_at():
    product = shelf()  # 20.00 each
    stuck_order(product, step="confirm")  # reserved and charged: 20.00 held, 1 unit reserved
    stuck_order(product, step="confirm")
    stuck_order(product, step="ship")  # charged and sold: money held, no stock reserved
    stuck_order(product, step="charge")  # reserved, nothing charged
    order_completed(placed_order(product))  # not stuck: holds nothing here
    holdings = {h.step: h for h in stuck_orders_summary(timezone.now()).holdings}
    assert list(holdings) == ["charge", "confirm", "ship"]
    assert holdings["confirm"].money == {"EUR": Decimal("40.00")} and holdings["confirm"].units_reserved == 2
    assert holdings["ship"].money == {"EUR": Decimal("20.00")} and holdings["ship"].units_reserved == 0
    assert holdings["charge"].money == {} and holdings["charge"].units_reserved == 1


def stuck_refusing_the_refund() -> Order:
    """An order whose saga is stuck compensating: the shipment cancelled and the stock put
    back, then the refund refused (through the services the compensations call)."""
    from orders.saga.shared import SagaTransition
    from orders.services import inventory, shipping
    from orders.services.saga import saga_step_failed, saga_step_started, saga_transition_record

    from .saga_states import order_advanced

    order = placed_order(shelf())  # 20.00
    order_advanced(order, through="ship")
    wf = order.workflow_id
    shipping.shipment_cancel(order_id=order.pk, attempt=1)
    inventory.inventory_restock(order_id=order.pk, idempotency_key=f"{wf}:confirm:compensate", attempt=1)
    saga_step_started(order_id=order.pk, step="charge", step_key=f"{wf}:charge:compensate", attempt=1,
                      compensation=True)
    saga_step_failed(order_id=order.pk, step="charge", step_key=f"{wf}:charge:compensate", attempt=1,
                     error="Refund refused by the gateway")
    saga_transition_record(SagaTransition(order_id=order.pk, kind="stuck", step="charge",
                                          saga_status="compensation_stuck", detail="refund refused"))
    return order


@pytest.mark.django_db
def test_a_saga_stuck_compensating_holds_what_its_ledger_says_was_not_refunded_yet():
    """The charge is still held (read from the payments ledger); the stock is not."""
    stuck_refusing_the_refund()
    summary = stuck_orders_summary(timezone.now())
    assert summary.ages.total == 1 and [(s.step, s.orders) for s in summary.by_step] == [("charge", 1)]
    assert [(h.step, h.money, h.units_reserved) for h in summary.holdings] == [("charge", {"EUR": Decimal("20.00")}, 0)]


def chart_queries() -> int:
    with CaptureQueriesContext(connection) as ctx:
        dashboard_charts()
    return len(ctx.captured_queries)


@pytest.mark.django_db
def test_dashboard_charts_are_at_most_six_queries_whatever_the_rows():
    product = shelf()
    assert chart_queries() == 4  # no saga stuck: nothing held to look up
    for minutes in (2, 30, 300):
        stuck_order(product, minutes_ago=minutes)
        followup_order(product)
    few = chart_queries()
    for minutes in range(10):
        stuck_order(product, step="ship", minutes_ago=minutes)
        order_completed(placed_order(product))
    assert few == chart_queries() == 5  # stuck, but none of them compensating
    stuck_refusing_the_refund()
    assert chart_queries() == 6


# --- presenters -----------------------------------------------------------------------------------


def test_orders_per_hour_chart_draws_a_mark_per_outcome_and_hour_with_its_words():
    from django.utils import timezone

    from ops.charts.selectors import HourCounts, OUTCOMES

    # Hours are shown in the shop's time zone (SHOP_TIME_ZONE): the day starts at its midnight.
    start = datetime(2026, 1, 5, 0, 0, tzinfo=timezone.get_current_timezone())
    hours = [HourCounts(start + timedelta(hours=i), {o: 0 for o in OUTCOMES}) for i in range(24)]
    hours[5].counts.update(completed=3, stuck=1)
    hours[23].counts.update(completed=1)
    chart = orders_per_hour_chart(hours)
    assert not chart.empty
    assert [m.css for m in chart.marks] == ["chart-outcome-completed", "chart-outcome-stuck", "chart-outcome-completed"]
    assert chart.marks[1].title == "05:00–06:00: 1 stuck of 4"
    assert "5 orders placed in the last 24 hours; the busiest hour began at 05:00 with 4." == chart.description
    assert [label for _, label in chart.legend] == ["completed", "stuck"]
    assert chart.table_rows == [["05:00", "3", "1", "4"], ["23:00", "1", "0", "1"]]
    assert [label.text for label in chart.x_labels] == ["00:00", "03:00", "06:00", "09:00", "12:00", "15:00", "18:00",
                                                        "21:00"]
    nothing = orders_per_hour_chart([HourCounts(h.start, {o: 0 for o in OUTCOMES}) for h in hours])
    assert nothing.empty == "No orders were placed in the last 24 hours." and nothing.marks == []


def test_failure_rate_chart_says_which_step_fails_most():
    from ops.charts.selectors import StepFailures

    chart = failure_rate_chart([StepFailures("charge", "Charge payment", 4, 3),
                                StepFailures("ship", "Arrange shipping", 0, 0)])
    charge, ship = chart.bars
    assert charge.value_text == "75% (3 of 4)" and charge.css == "chart-rate-high"
    assert float(charge.width) == pytest.approx(chart.track_width * 0.75)
    assert ship.value_text == "no attempts" and float(ship.width) == 0
    assert "Charge payment failed most often, 75% of its attempts" in chart.description
    assert failure_rate_chart([StepFailures("ship", "Arrange shipping", 0, 0)]).empty


# --- the pages -------------------------------------------------------------------------------------

SVG = re.compile(r'<svg [^>]*role="img"[^>]*>\s*<title id="([^"]+)">[^<]+</title>\s*<desc id="([^"]+)">[^<]+</desc>')


@pytest.mark.django_db
def test_dashboard_without_data_says_so_in_a_sentence_per_chart(client_as):
    body = client_as("viewer").get(reverse("ops:home")).content.decode()
    assert 'id="ops-charts"' in body
    for sentence in ("No orders were placed in the last 24 hours.", "No step finished an attempt in the last 24 hours.",
                     "No saga is stuck.", "No follow-up is open.",
                     "No saga is stuck, so no order holds money or stock."):
        assert sentence in body
    assert "<svg" not in body.split('id="ops-charts"')[1].split("</section>")[0]


@pytest.mark.django_db
def test_dashboard_with_data_draws_every_chart_with_a_title_a_description_and_a_table(client_as):
    product = shelf()
    stuck_order(product, step="confirm", minutes_ago=20)
    followup_order(product)
    order_completed(placed_order(product))
    body = client_as("viewer").get(reverse("ops:home")).content.decode()
    charts = body.split('id="ops-charts"')[1]
    svgs = SVG.findall(charts)
    assert len(svgs) == 5, charts
    for title_id, desc_id in svgs:
        assert f'aria-labelledby="{title_id} {desc_id}"' in charts
    assert charts.count('<details class="chart-data">') == 5
    assert "3 orders placed in the last 24 hours" in charts
    assert "1 stuck saga waiting; the oldest for 20 min" in charts
    assert "Stuck orders hold 20.00 EUR charged and not refunded, and 1 unit of stock reserved." in charts
    assert "Stuck: 1 at Confirm inventory." in charts
    assert 'class="chart-outcome-completed"' in charts and 'class="chart-outcome-stuck"' in charts
    # No inline styles or scripts (a Content-Security-Policy is coming).
    assert " style=" not in charts and "<script" not in charts


@pytest.mark.django_db
def test_order_page_shows_the_waterfall_above_the_timeline(client_as):
    order = stuck_order(shelf(), step="charge", failed=2)
    body = client_as("viewer").get(reverse("orders:detail", args=[order.pk])).content.decode()
    waterfall = body.index(f'id="order-{order.pk}-waterfall"')
    assert waterfall < body.index(f'id="saga-{order.pk}"')
    section = body[waterfall:].split("</section>")[0]
    assert SVG.search(section)
    assert section.count('data-row="') == 3  # validate, reserve, charge
    assert "waiting for an operator" in section and "wf-operator-wait wf-open" in section
    assert "Attempt 2" in section  # the table alternative


@pytest.mark.django_db
def test_order_page_without_saga_events_says_the_waterfall_is_empty(client_as):
    order = placed_order()
    body = client_as("viewer").get(reverse("orders:detail", args=[order.pk])).content.decode()
    section = body[body.index(f'id="order-{order.pk}-waterfall"'):].split("</section>")[0]
    assert "The saga has not recorded a step yet" in section and "<svg" not in section


@pytest.mark.django_db
def test_the_waterfall_costs_the_order_page_no_query(client_as, monkeypatch):
    order = stuck_order(shelf(), step="charge")
    client = client_as("viewer")
    url = reverse("orders:detail", args=[order.pk])
    client.get(url)
    with CaptureQueriesContext(connection) as with_chart:
        client.get(url)
    from ops.order_pages.views import detail

    monkeypatch.setattr(detail, "waterfall_present", lambda waterfall: None)
    with CaptureQueriesContext(connection) as without_chart:
        client.get(url)
    assert len(with_chart.captured_queries) == len(without_chart.captured_queries)


@pytest.mark.django_db
def test_saga_waterfall_selector_reads_an_order_in_two_queries():
    order = stuck_order(shelf(), step="ship")
    with CaptureQueriesContext(connection) as ctx:
        waterfall = saga_waterfall(order.pk)
    assert len(ctx.captured_queries) == 2
    assert [r.key for r in waterfall.rows] == ["step-validate", "step-reserve", "step-charge", "step-confirm",
                                               "step-ship"]
    assert saga_waterfall(order.pk + 1000) is None


@pytest.mark.django_db
def test_a_cancelled_saga_draws_its_compensations():
    order = placed_order()
    order_cancelled(order, after="charge")
    view = waterfall_present(saga_waterfall(order.pk))
    assert [r.label for r in view.rows][-2:] == ["Refund payment", "Release reservation"]
    assert view.description.startswith("3 steps and 2 compensations over ")  # validate, reserve, charge
    assert all("wf-compensation wf-succeeded" in m.css for r in view.rows[-2:] for m in r.marks)


# --- live: both sockets send the charts again, at most once per coalesce window ---------------------


@pytest.fixture
def _close_socket_reads():
    yield
    reader_connection_close()


@pytest.mark.django_db(transaction=True)
async def test_dashboard_socket_sends_the_charts_on_connect_and_after_an_event(staff_user, _close_socket_reads):
    viewer = await sync_to_async(staff_user)("viewer")
    communicator = await open_socket("/ws/ops/", viewer)
    try:
        first = await communicator.receive_from(timeout=5)
        assert ('<section id="ops-charts" class="ops-charts" aria-labelledby="ops-charts-heading" '
                'hx-swap-oob="true">') in first
        assert "No saga is stuck." in first
        order = await sync_to_async(stuck_order)(minutes_ago=1)
        await sync_to_async(record_event)(order, step="charge", kind="retrying")
        update = await receive_until(communicator, "1 stuck saga waiting")
        assert 'id="ops-charts"' in update and "No saga is stuck." not in update
    finally:
        await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_order_socket_sends_the_waterfall_on_connect_and_once_after_a_burst(staff_user, monkeypatch,
                                                                                   _close_socket_reads):
    renders = []
    real_render = order_consumers.render_waterfall

    def counting_render(order_id, *args):
        renders.append(time.monotonic())
        return real_render(order_id, *args)

    monkeypatch.setattr(order_consumers, "render_waterfall", counting_render)
    viewer = await sync_to_async(staff_user)("viewer")
    order = await sync_to_async(make_order)(start_saga=False)
    sockets = [await open_socket(f"/ws/orders/{order.pk}/", viewer) for _ in range(2)]
    try:
        for socket in sockets:
            first = await socket.receive_from(timeout=5)
            assert f'<section id="order-{order.pk}-waterfall" class="saga-waterfall"' in first
            assert "The saga has not recorded a step yet" in first
        renders.clear()

        for kind, attempt in (("started", 1), ("failed", 1), ("retrying", 2), ("failed", 2), ("retrying", 3)):
            await sync_to_async(_record_attempt)(order, kind, attempt)
        for socket in sockets:
            frame = await receive_until(socket, f'id="order-{order.pk}-waterfall"')
            assert 'hx-swap-oob="true"' in frame and 'data-row="step-charge"' in frame
        await asyncio.sleep(COALESCE_SECONDS * 3)
        # Five events to two sockets: ten redraws without coalescing and sharing.
        assert 1 <= len(renders) <= 3, renders
    finally:
        for socket in sockets:
            await socket.disconnect()


def _record_attempt(order, kind, attempt):
    from django.db import transaction

    from orders.services.events import saga_event_record

    with transaction.atomic():
        saga_event_record(order, kind=kind, step="charge", detail="from a test", attempt=attempt)


@pytest.mark.django_db
def test_dashboard_charts_view_brings_the_stuck_steps_into_its_note():
    product = shelf()
    stuck_order(product, step="ship", minutes_ago=90)
    view = dashboard_charts_present(dashboard_charts())
    assert view.stuck_ages.note == "Stuck: 1 at Arrange shipping."
    assert view.stuck_ages.table_rows[3] == ["1–4 h", "1"]
    assert view.holdings.table_rows == [["Arrange shipping", "20.00 EUR", "0"]]


@pytest.mark.django_db
def test_order_socket_folds_the_waterfall_from_the_timeline_its_last_frame_read():
    # The redraw after a burst reads nothing when the event's frame read the order already;
    # an event newer than that read is read, as before.
    order = make_order(start_saga=False)
    _record_attempt(order, "started", 1)
    event_id = SagaEvent.objects.filter(order=order).latest("id").pk
    order_consumers.render_detail_frame(order.pk, event_id, "started", "charge")
    with CaptureQueriesContext(connection) as reused:
        folded = order_consumers.render_waterfall(order.pk, event_id)
    assert len(reused) == 0
    assert 'data-row="step-charge"' in folded and 'hx-swap-oob="true"' in folded

    _record_attempt(order, "failed", 1)
    newer_id = SagaEvent.objects.filter(order=order).latest("id").pk
    with CaptureQueriesContext(connection) as read:
        redrawn = order_consumers.render_waterfall(order.pk, newer_id)
    assert len(read) == 2
    assert 'data-row="step-charge"' in redrawn
