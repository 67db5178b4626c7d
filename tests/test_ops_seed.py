"""bench/seed_orders.py writes what the benchmark pages need, consistently."""

import pytest

from bench.seed_orders import seed
from orders.models import FollowUp, Order, OrderLine, Product, SagaEvent
from orders.models import OperatorAction

pytestmark = pytest.mark.django_db


def test_seed_writes_orders_with_lines_events_and_queues():
    seed(total=400, batch=150, seed_value=7)
    assert Order.objects.count() == 400
    assert list(Order.objects.order_by("pk").values_list("number", flat=True)[:2]) == ["SO-000001", "SO-000002"]
    assert OrderLine.objects.count() >= 400
    assert 6 <= SagaEvent.objects.count() / 400 <= 10  # about eight events an order
    stuck = Order.objects.filter(saga_status="stuck")
    assert stuck.exists()
    assert not stuck.filter(stuck_since=None).exists() and not stuck.filter(last_error="").exists()
    for order in stuck:
        assert order.events.order_by("-id").first().kind == "stuck"
        assert order.events.filter(step=order.current_step, kind="failed").count() == 3
    open_followups = FollowUp.objects.filter(state="open")
    assert open_followups.exists()
    assert set(open_followups.values_list("order__saga_status", flat=True)) == {"needs_followup"}
    assert OperatorAction.objects.exists()
    # Timestamps are spread out as given, not stamped at seeding time.
    span = Order.objects.order_by("created_at").values_list("created_at", flat=True)
    assert (span.last() - span.first()).days >= 30
    # Stock counters untouched, so conservation holds.
    for product in Product.objects.all():
        assert product.on_hand + product.reserved + product.sold == product.received


def test_seeding_again_appends_after_the_last_order():
    seed(total=20, batch=20, seed_value=1)
    seed(total=20, batch=20, seed_value=2)
    assert Order.objects.count() == 40
    assert Order.objects.order_by("-pk").first().number == "SO-000040"
    assert Product.objects.count() == 200  # the bench shelf is made once
