"""Previews before an irreversible action (issue 11): compensate, cancel and bulk compensate
say what they would undo, read from the ledgers at that moment; a finished rollback says
what it did; the stuck queue shows what each order holds and the oldest stuck age.

Orders are put into saga states by the services the saga's activities call (tests/saga_states.py).
"""

import html as html_lib
from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse

from ops.models import BulkOperation
from orders.selectors.preview import bulk_rollback_preview, rollback_outcome, rollback_preview

from .factories import make_order, make_product
from .saga_states import clock_set_back, order_advanced, order_cancelled, order_compensated, order_stuck

pytestmark = pytest.mark.django_db

BULK_URL = "/ops/background/bulk/"


def stuck_at(step: str, *, products=None, ago: timedelta | None = None):
    order = make_order(start_saga=False, products=products)
    before = {"charge": "reserve", "confirm": "charge", "ship": "confirm"}[step]
    if ago:
        with clock_set_back(ago):
            order_advanced(order, through=before)
            order_stuck(order, step=step, error=f"{step} unavailable: timed out")
    else:
        order_advanced(order, through=before)
        order_stuck(order, step=step, error=f"{step} unavailable: timed out")
    order.refresh_from_db()
    return order


def page(client, url: str) -> str:
    return html_lib.unescape(client.get(url).content.decode())


def test_preview_reads_the_ledgers_at_each_stage():
    widget, gadget = make_product(price="10.00", name="Widget"), make_product(price="5.50", name="Gadget")
    held = stuck_at("charge", products=[(widget, 2), (gadget, 1)])
    preview = rollback_preview(held.pk)
    assert preview.refund == 0 and not preview.charged
    assert [(line.product, line.quantity) for line in preview.release] == [("Widget", 2), ("Gadget", 1)]
    assert preview.restock == [] and preview.parcels_to_cancel == 0 and preview.emails == 0

    sold = stuck_at("ship", products=[(widget, 2), (gadget, 1)])
    preview = rollback_preview(sold.pk)
    assert preview.refund == Decimal("25.50") and preview.charged
    assert preview.items_to_restock == 3 and preview.release == []


def test_detail_buttons_preview_the_rollback_and_cancel_never_promises_no_charge(client_as):
    widget = make_product(price="12.00", name="Widget")
    charged = stuck_at("confirm", products=[(widget, 2)])
    body = page(client_as("operator"), reverse("orders:detail", args=[charged.pk]))
    preview = body[body.index(f'id="rollback-preview-{charged.pk}"'):]
    assert "Refund 24.00 EUR to the customer (they were charged)" in preview
    assert "Release the reservation of 2 items: 2 × Widget" in preview
    assert "No email to the customer" in preview
    assert "not charged" not in body  # the old cancel confirmation's promise
    # Compensate and cancel do not look alike: different classes and words.
    compensate = body[body.index('formaction="/orders/' + str(charged.pk) + '/actions/compensate/"') - 200:]
    assert 'class="warning"' in compensate[:400] and "Compensate (roll back)" in compensate[:1200]
    assert "Refund 24.00 EUR" in compensate[:1500]  # in its confirmation too


def test_cancel_confirmation_of_an_uncharged_order_says_nothing_to_refund(client_as):
    order = make_order(start_saga=False, products=[(make_product(name="Widget"), 1)])
    order_advanced(order, through="reserve")  # running: cancel fits, nothing charged yet
    body = page(client_as("operator"), reverse("orders:detail", args=[order.pk]))
    assert "/actions/cancel/" in body and 'class="danger"' in body
    assert "Cancel order" in body and "the order ends as cancelled" in body
    assert "Nothing to refund: the customer has not been charged" in body


def test_finished_rollback_says_what_it_did(client_as):
    widget = make_product(price="7.00", name="Widget")
    order = make_order(start_saga=False, products=[(widget, 3)])
    order_compensated(order, failed_step="ship", error="carrier refused the shipment: address not serviceable")
    order.refresh_from_db()
    outcome = rollback_outcome(order)
    assert outcome.refunded == Decimal("21.00") and outcome.restocked == 3
    body = page(client_as("viewer"), reverse("orders:detail", args=[order.pk]))
    done = body[body.index(f'id="rollback-outcome-{order.pk}"'):]
    assert "Refunded 21.00 EUR" in done and "Restocked 3 items" in done and "No email was sent" in done


def test_cancelled_before_charge_outcome_is_a_release():
    order = make_order(start_saga=False, products=[(make_product(), 2)])
    order_cancelled(order, after="reserve")
    order.refresh_from_db()
    outcome = rollback_outcome(order)
    assert outcome.refunded == 0 and outcome.released == 2 and outcome.restocked == 0


def test_bulk_compensate_previews_first_and_saves_nothing(client_as):
    widget = make_product(price="10.00", name="Widget")
    orders = [stuck_at("confirm", products=[(widget, 1)]), stuck_at("charge", products=[(widget, 2)])]
    assert bulk_rollback_preview([o.pk for o in orders]).refunds == {"EUR": Decimal("10.00")}
    client = client_as("operator")
    response = client.post(BULK_URL, {"action": "compensate", "reason": "gateway gone",
                                      "order_ids": [str(o.pk) for o in orders]})
    assert response.status_code == 200 and not BulkOperation.objects.exists()
    body = html_lib.unescape(response.content.decode())
    preview = body[body.index('id="bulk-preview"'):]
    assert "Refund 10.00 EUR to 1 customer" in preview and "Release reservations of 3 items" in preview
    assert 'name="confirmed" value="yes"' in body and 'value="gateway gone"' in body
    response = client.post(BULK_URL, {"action": "compensate", "reason": "gateway gone", "confirmed": "yes",
                                      "order_ids": [str(o.pk) for o in orders]})
    assert response.status_code == 302 and BulkOperation.objects.get().total == 2


def test_bulk_retry_needs_no_preview(client_as):
    order = stuck_at("charge")
    response = client_as("operator").post(BULK_URL, {"action": "retry", "order_ids": [str(order.pk)]})
    assert response.status_code == 302 and BulkOperation.objects.count() == 1


def test_bulk_preview_of_a_bad_selection_is_the_usual_message(client_as):
    response = client_as("operator").post(BULK_URL, {"action": "compensate", "order_ids": ["abc"]})
    assert response.status_code == 302 and not BulkOperation.objects.exists()


def test_stuck_queue_shows_amount_holdings_and_oldest_age(client_as):
    widget = make_product(price="10.00", name="Widget")
    old = stuck_at("confirm", products=[(widget, 2)], ago=timedelta(hours=3))
    stuck_at("charge", products=[(widget, 1)])
    body = page(client_as("operator"), reverse("ops:stuck"))
    assert "Oldest stuck:" in body and "waiting for 3" in body and "hours" in body
    row = body[body.index(f'id="stuck-{old.pk}"'):]
    row = row[:row.index("</tr>")]
    assert "20.00 EUR" in row and "20.00 EUR charged" in row and "2 items of stock held" in row
    assert "Refund 20.00 EUR to the customer" in row  # the per-row compensate preview


def test_bulk_compensate_progress_says_what_the_rollbacks_did(client_as, operator_user):
    from ops.models import BulkOperationItem

    widget = make_product(price="9.00", name="Widget")
    orders = []
    for _ in range(2):
        order = make_order(start_saga=False, products=[(widget, 2)])
        order_compensated(order, failed_step="confirm", error="Warehouse down")
        orders.append(order)
    pending = stuck_at("charge", products=[(widget, 1)])  # not signalled yet: not counted
    operation = BulkOperation.objects.create(action="compensate", requested_by=operator_user, total=3, done=2)
    for order, state in ((orders[0], "done"), (orders[1], "done"), (pending, "pending")):
        BulkOperationItem.objects.create(operation=operation, order=order, state=state)
    body = page(client_as("operator"), reverse("background:bulk_detail", args=[operation.pk]))
    done = body[body.index(f'id="bulk-{operation.pk}-rollback"'):]
    assert "Refunded 36.00 EUR" in done and "released reservations of 4 items" in done
    assert "No email was sent to the customers" in done
