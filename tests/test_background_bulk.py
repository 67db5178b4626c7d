"""Bulk retry / compensate: one Celery task, one audit row per order, live progress that
survives a reload, clear refusals for bad input, and safe to run twice."""

import asyncio
import re

import pytest
from asgiref.sync import sync_to_async
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from ops.bulk import BulkInputInvalid, bulk_operation_create, bulk_operation_execute
from ops.models import BulkOperation, BulkOperationItem
from orders.models import OperatorAction
from sandbox.adapters import sandbox_outage_set
from orders.status import OrderStatus, SagaStatus

from .background_support import order_rows_create
from .conftest import order_state, wait_for
from .factories import make_order

# Fixtures celery_worker and orders_only_env, defined once for all modules that use them.
pytest_plugins = ["tests.background_fixtures"]

pytestmark = pytest.mark.django_db(transaction=True)

BULK_URL = "/ops/background/bulk/"


def _progress_numbers(html: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r'data-progress="(\w+)">(\d+)<', html)}


async def test_bulk_retry_of_50_stuck_sagas_completes_them_all(saga_env, celery_worker, client_as, settings):
    assert reverse("background:bulk_create") == BULK_URL  # the stuck queue's form posts here
    # 50 sagas failing at once would open the gateway's circuit breaker and wait for it
    # instead of going stuck (tests/test_circuit_breaker_saga.py): here they must be stuck.
    settings.CIRCUIT_BREAKER_ENABLED = False
    await sync_to_async(sandbox_outage_set)("payment", active=True)
    orders = [await sync_to_async(make_order)() for _ in range(50)]
    await wait_for(lambda: all(order_state(o.pk).saga_status == SagaStatus.STUCK for o in orders),
                   timeout=120, message="50 stuck sagas")
    await sync_to_async(sandbox_outage_set)("payment", active=False)

    operator = await sync_to_async(client_as)("operator")
    response = await sync_to_async(operator.post)(
        BULK_URL, {"action": "retry", "step": "charge", "reason": "gateway is back"})
    assert response.status_code == 302
    operation = await sync_to_async(BulkOperation.objects.get)()
    assert response.url == reverse("background:bulk_detail", args=[operation.pk])
    assert operation.total == 50 and operation.step == "charge"

    # Watch the progress partial as the page would (htmx polls it every second).
    seen = []
    while True:
        partial = await sync_to_async(operator.get)(response.url, HTTP_HX_REQUEST="true")
        html = partial.content.decode()
        numbers = _progress_numbers(html)
        seen.append(numbers["processed"])
        if numbers["processed"] == 50:
            break
        assert 'hx-trigger="every 1s"' in html  # still polling while unfinished
        assert len(seen) < 600, "bulk operation did not finish"
        await asyncio.sleep(0.1)
    assert seen == sorted(seen)  # progress only goes forward

    await wait_for(lambda: BulkOperation.objects.get(pk=operation.pk).state == "finished", message="finished")
    results = await asyncio.gather(*(saga_env.result(o, timeout=120) for o in orders))
    assert results == ["completed"] * 50

    # A reload shows the same, final numbers, and no more polling.
    page = await sync_to_async(operator.get)(response.url)
    html = page.content.decode()
    assert _progress_numbers(html) == {"processed": 50, "total": 50, "done": 50, "failed": 0, "remaining": 0}
    assert 'hx-trigger="every 1s"' not in html
    assert '<progress max="50" value="50"' in html

    actions = await sync_to_async(lambda: list(OperatorAction.objects.values_list("order_id", "action", "outcome")))()
    assert len(actions) == 50
    assert {a[0] for a in actions} == {o.pk for o in orders}
    assert {(a[1], a[2]) for a in actions} == {("retry", "applied")}
    items = await sync_to_async(lambda: list(BulkOperationItem.objects.values_list("state", "operator_action_id")))()
    assert {s for s, _ in items} == {"done"} and all(a is not None for _, a in items)


def test_orders_that_are_not_stuck_fail_one_by_one_with_the_reason(operator_user, temporal_server):
    finished = order_rows_create(2, saga_status=SagaStatus.COMPLETED, status=OrderStatus.COMPLETED)
    # Stuck in the database but with no workflow: the signal cannot be delivered.
    orphan = order_rows_create(1, saga_status=SagaStatus.STUCK, status=OrderStatus.PROCESSING)[0]
    operation = BulkOperation.objects.create(action="compensate", requested_by=operator_user, total=3)
    for order in [*finished, orphan]:
        BulkOperationItem.objects.create(operation=operation, order=order)

    operation = bulk_operation_execute(operation_id=operation.pk)
    assert (operation.state, operation.done, operation.failed, operation.remaining) == ("finished", 0, 3, 0)
    details = dict(operation.items.values_list("order_id", "detail"))
    for order in finished:
        assert details[order.pk] == f"Order {order.number} is not stuck (its saga is completed)."
    assert details[orphan.pk].startswith("Could not reach the saga")
    # Refused before any audit row; the undeliverable one is audited as failed.
    assert list(OperatorAction.objects.values_list("order_id", "outcome")) == [(orphan.pk, "failed")]


def test_executing_again_sends_nothing_twice(operator_user, temporal_server):
    orders = order_rows_create(3, saga_status=SagaStatus.STUCK, status=OrderStatus.PROCESSING)
    operation = BulkOperation.objects.create(action="retry", requested_by=operator_user, total=3)
    items = [BulkOperationItem.objects.create(operation=operation, order=o) for o in orders]
    # A worker died after the first order's audit row was written, and during the second's claim.
    claimed = timezone.now()
    BulkOperationItem.objects.filter(pk__in=[items[0].pk, items[1].pk]).update(state="sending", claimed_at=claimed)
    audit = OperatorAction.objects.create(order=orders[0], action="retry", actor=operator_user, outcome="sent")

    bulk_operation_execute(operation_id=operation.pk)
    bulk_operation_execute(operation_id=operation.pk)

    assert OperatorAction.objects.filter(order=orders[0]).count() == 1  # recovered, not resent
    assert OperatorAction.objects.filter(order=orders[1]).count() == 1  # claimed but never sent: sent once
    assert OperatorAction.objects.filter(order=orders[2]).count() == 1
    first = BulkOperationItem.objects.get(pk=items[0].pk)
    assert first.state == "done" and first.operator_action_id == audit.pk
    operation.refresh_from_db()
    assert operation.done + operation.failed == 3 and operation.remaining == 0


@pytest.mark.parametrize("data, message", [
    ({"action": "retry", "reason": "x"}, "Select at least one order."),
    ({"action": "explode", "order_ids": ["1"]}, "Choose an action: retry or compensate."),
    ({"action": "retry", "order_ids": ["12abc"]}, "'12abc' is not an order id."),
    ({"action": "retry", "order_ids": ["999999"]}, "No such order: #999999."),
    # Past bigint: a number, but no order id (it overflowed the query with a 500 before).
    ({"action": "retry", "order_ids": ["99999999999999999999"]}, "'99999999999999999999' is not an order id."),
    ({"action": "retry", "order_ids": ["²"]}, "'²' is not an order id."),
    # Over the documented limit of 2,000: the bulk action's own message, not Django's field-count 400.
    ({"action": "retry", "order_ids": [str(i) for i in range(1, 3001)]},
     "At most 2000 orders at once: narrow the selection."),
    ({"action": "retry", "step": "teleport"}, "Unknown step 'teleport'."),
    ({"action": "retry", "step": "charge"}, "No orders are stuck at Charge payment."),
])
def test_bad_bulk_input_is_refused_with_a_clear_message(client_as, data, message):
    operator = client_as("operator")
    response = operator.post(BULK_URL, data, HTTP_REFERER="http://testserver/ops/stuck/?step=charge")
    assert response.status_code == 302
    assert response.url == "http://testserver/ops/stuck/?step=charge"
    assert [str(m) for m in get_messages(response.wsgi_request)] == [message]
    assert not BulkOperation.objects.exists()


def test_bad_bulk_input_over_htmx_gets_the_error_partial(client_as):
    response = client_as("operator").post(BULK_URL, {"action": "retry"}, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200
    assert 'id="bulk-form-errors"' in html and 'role="alert"' in html and "Select at least one order." in html


def test_htmx_bulk_request_returns_the_progress_partial(client_as, django_capture_on_commit_callbacks, monkeypatch):
    from ops import jobs
    from ordersite.celery import app as celery_app

    queued = []
    # Services queue by task name (ops.jobs); catch what would reach the broker.
    monkeypatch.setattr(celery_app, "send_task", lambda name, args: queued.append((name, *args)))
    orders = order_rows_create(2, saga_status=SagaStatus.STUCK, status=OrderStatus.PROCESSING)
    with django_capture_on_commit_callbacks(execute=True):
        response = client_as("operator").post(
            BULK_URL, {"action": "compensate", "confirmed": "yes", "order_ids": [str(o.pk) for o in orders]},
            HTTP_HX_REQUEST="true")
    operation = BulkOperation.objects.get()
    assert queued == [(jobs.BULK_OPERATION_RUN, operation.pk)]  # the task is queued after commit
    assert response["HX-Push-Url"] == reverse("background:bulk_detail", args=[operation.pk])
    html = response.content.decode()
    assert f'id="bulk-{operation.pk}"' in html and "<html" not in html
    assert _progress_numbers(html) == {"processed": 0, "total": 2, "done": 0, "failed": 0, "remaining": 2}


def test_viewers_and_support_cannot_start_bulk_operations(client_as, staff_user):
    orders = order_rows_create(1, saga_status=SagaStatus.STUCK, status=OrderStatus.PROCESSING)
    for role in ("viewer", "support"):
        response = client_as(role).post(BULK_URL, {"action": "retry", "order_ids": [str(orders[0].pk)]})
        assert response.status_code == 403
    with pytest.raises(Exception, match="not allowed"):
        bulk_operation_create(action="retry", actor=staff_user("support"), order_ids=[orders[0].pk])
    assert not BulkOperation.objects.exists()


def test_too_many_orders_are_refused(operator_user, settings):
    settings.BULK_MAX_ORDERS = 3
    orders = order_rows_create(4, saga_status=SagaStatus.STUCK, status=OrderStatus.PROCESSING)
    with pytest.raises(BulkInputInvalid, match="At most 3 orders"):
        bulk_operation_create(action="retry", actor=operator_user, order_ids=[o.pk for o in orders])


def test_progress_page_queries_do_not_grow_with_items(client_as, operator_user):
    viewer = client_as("viewer")

    def page_queries(count: int) -> int:
        orders = order_rows_create(count, saga_status=SagaStatus.COMPLETED, status=OrderStatus.COMPLETED)
        operation = BulkOperation.objects.create(action="retry", requested_by=operator_user, total=count,
                                                 failed=count, state="finished")
        BulkOperationItem.objects.bulk_create(
            BulkOperationItem(operation=operation, order=o, state="failed", detail="not stuck") for o in orders)
        with CaptureQueriesContext(connection) as queries:
            html = viewer.get(reverse("background:bulk_detail", args=[operation.pk])).content.decode()
        assert html.count("not stuck") == count
        return len(queries)

    assert page_queries(3) == page_queries(40)


def test_finished_operation_with_failures_offers_to_try_them_again(client_as, operator_user):
    orders = order_rows_create(2, saga_status=SagaStatus.COMPLETED, status=OrderStatus.COMPLETED)
    operation = BulkOperation.objects.create(action="retry", requested_by=operator_user, total=2, failed=2,
                                             state="finished", reason="second try")
    BulkOperationItem.objects.bulk_create(
        BulkOperationItem(operation=operation, order=o, state="failed", detail="not stuck") for o in orders)
    html = client_as("operator").get(reverse("background:bulk_detail", args=[operation.pk])).content.decode()
    assert "Try these 2 again" in html
    for order in orders:
        assert f'name="order_ids" value="{order.pk}"' in html
    assert "Try these" not in client_as("viewer").get(reverse("background:bulk_detail", args=[operation.pk])).content.decode()


def test_bulk_list_and_unknown_operation(client_as, operator_user):
    BulkOperation.objects.create(action="compensate", requested_by=operator_user, total=1, step="charge")
    viewer = client_as("viewer")
    html = viewer.get(BULK_URL).content.decode()
    assert "Compensate" in html and "stuck at Charge payment" in html
    assert viewer.get(reverse("background:bulk_detail", args=[424242])).status_code == 404
