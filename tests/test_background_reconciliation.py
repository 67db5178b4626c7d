"""Reconciliation finds each kind of planted discrepancy, reports a clean database as clean
(including one made by real sagas), and runs on demand from its page through Celery."""

import asyncio
import time
import uuid
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from temporalio.client import Client

from ops.models import Discrepancy, ReconciliationRun
from ops.reconciliation import reconciliation_run_create, reconciliation_run_execute
from sandbox.adapters import sandbox_outage_set
from orders.models import Order, Payment, Product, SagaEvent
from orders.saga.shared import SagaInput
from orders.status import SagaStatus

from .background_support import order_backdate
from .conftest import order_state, wait_for
from .factories import make_order, make_product
from .saga_states import order_compensated_at_confirm, order_completed, order_running

# Fixtures celery_worker and orders_only_env, defined once for all modules that use them.
pytest_plugins = ["tests.background_fixtures"]

Kind = Discrepancy.Kind
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _own_saga_queue(settings):
    # Workflows are listed per task queue: one of our own keeps other tests' sagas out.
    settings.SAGA_TASK_QUEUE = f"recon-{uuid.uuid4().hex[:8]}"
    settings.RECONCILIATION_GRACE_SECONDS = 0


# --- orders where a saga would have left them, through the services it calls --------------


def _settle(order):
    """Backdate the order's last event and creation, so no check skips it as too recent."""
    order_backdate(order.pk, 3600)


def completed_order_rows(product: Product, quantity: int = 1) -> Order:
    """An order whose saga completed: sold stock, one charge, the events that go with them."""
    order = make_order(products=[(product, quantity)], start_saga=False)
    order_completed(order)
    _settle(order)
    return order


def compensated_order_rows(product: Product) -> Order:
    """An order whose confirm step failed: reservation released, charge refunded."""
    order = make_order(products=[(product, 1)], start_saga=False)
    order_compensated_at_confirm(order)
    _settle(order)
    return order


def running_order_rows() -> Order:
    """An order whose saga runs (validated, processing) but has no workflow in Temporal."""
    order = make_order(start_saga=False)
    order_running(order)
    _settle(order)
    return order


def run_now() -> ReconciliationRun:
    run = reconciliation_run_create(trigger=ReconciliationRun.Trigger.MANUAL)
    return reconciliation_run_execute(run_id=run.pk)


def findings(run: ReconciliationRun) -> set[tuple[str, int | None, int | None, str]]:
    return set(run.discrepancies.values_list("kind", "order_id", "product_id", "workflow_id"))


def test_a_consistent_database_is_reported_clean(temporal_server):
    product = make_product(stock=20)
    completed_order_rows(product, 2)
    compensated_order_rows(product)
    run = run_now()
    assert run.state == ReconciliationRun.State.FINISHED
    assert findings(run) == set()
    assert run.clean and run.discrepancy_count == 0
    assert run.orders_checked == 2 and run.products_checked == 1 and run.workflows_checked == 0


async def test_each_kind_of_planted_discrepancy_is_found(temporal_server, settings):
    def plant():
        # Corrupt rows on purpose, written past the services: no path of the app produces
        # them, and reconciliation exists to find them.
        shelf = make_product(stock=50)
        drifting = make_product(stock=10)
        # Counters still add up (the CHECK constraint holds) but disagree with the ledger.
        Product.objects.filter(pk=drifting.pk).update(on_hand=F("on_hand") - 2, reserved=F("reserved") + 2)

        short_paid = completed_order_rows(shelf)
        Payment.objects.filter(order=short_paid).update(amount=F("amount") - Decimal("1.00"))

        charged_twice = completed_order_rows(shelf)
        Payment.objects.create(order=charged_twice, kind="charge", amount=charged_twice.total, currency="EUR",
                               idempotency_key=f"{charged_twice.workflow_id}:charge:again", gateway_reference="dup")

        borrowed_key = completed_order_rows(shelf)
        other = completed_order_rows(shelf)
        Payment.objects.filter(order=borrowed_key).update(idempotency_key=f"{other.workflow_id}:charge:borrowed")

        unfinished_log = completed_order_rows(shelf)
        SagaEvent.objects.filter(order=unfinished_log, kind="finished").delete()

        no_workflow = running_order_rows()
        return drifting, short_paid, charged_twice, borrowed_key, unfinished_log, no_workflow

    drifting, short_paid, charged_twice, borrowed_key, unfinished_log, no_workflow = await sync_to_async(plant)()

    client = await Client.connect(temporal_server.address)
    orphan_id = f"order-{900_000_000 + uuid.uuid4().int % 1_000_000}"
    # Nothing polls this queue: the workflow stays open without ever running.
    handle = await client.start_workflow("OrderSaga", SagaInput(order_id=0, payments_task_queue="none"),
                                         id=orphan_id, task_queue=settings.SAGA_TASK_QUEUE)
    try:
        # Visibility is eventually consistent: run again until the new workflow is listed.
        deadline = time.monotonic() + 20
        while True:
            run = await sync_to_async(run_now)()
            if (Kind.ORPHAN_WORKFLOW, None, None, orphan_id) in await sync_to_async(findings)(run):
                break
            assert time.monotonic() < deadline, "the open workflow never showed up in visibility"
            await asyncio.sleep(0.5)
    finally:
        await handle.terminate("test finished")

    found = await sync_to_async(findings)(run)
    expected = {
        (Kind.STOCK_DRIFT, None, drifting.pk, ""),
        (Kind.MONEY_MISMATCH, short_paid.pk, None, ""),
        (Kind.DUPLICATE_EFFECT, charged_twice.pk, None, ""),
        # Charged twice also breaks the money sum and the one-charge-one-event rule.
        (Kind.MONEY_MISMATCH, charged_twice.pk, None, ""),
        (Kind.SAGA_INCONSISTENT, charged_twice.pk, None, ""),
        (Kind.DUPLICATE_EFFECT, borrowed_key.pk, None, ""),
        # Our ledger against the gateway's books: an amount and keys the gateway never
        # booked, and the borrowed key's real charge, which our ledger no longer records.
        (Kind.GATEWAY_MISMATCH, short_paid.pk, None, ""),
        (Kind.GATEWAY_MISMATCH, charged_twice.pk, None, ""),
        (Kind.GATEWAY_MISMATCH, borrowed_key.pk, None, ""),
        (Kind.GATEWAY_UNRECORDED, borrowed_key.pk, None, ""),
        (Kind.SAGA_INCONSISTENT, unfinished_log.pk, None, ""),
        (Kind.ORPHAN_WORKFLOW, None, None, orphan_id),
        (Kind.MISSING_WORKFLOW, no_workflow.pk, None, no_workflow.workflow_id),
    }
    assert found == expected
    assert not run.clean and run.discrepancy_count == len(expected)
    details = dict(await sync_to_async(lambda: {(d.kind, d.order_id or d.product_id or d.workflow_id): d.detail
                                                 for d in run.discrepancies.all()})())
    assert "reserved is 2 but the ledger holds 0" in details[(Kind.STOCK_DRIFT, drifting.pk)]
    assert "0 'saga finished' events" in details[(Kind.SAGA_INCONSISTENT, unfinished_log.pk)]
    assert "not derived from its own order's workflow" in details[(Kind.DUPLICATE_EFFECT, borrowed_key.pk)]
    assert "2 charges" in details[(Kind.DUPLICATE_EFFECT, charged_twice.pk)]


async def test_real_sagas_leave_a_clean_database(saga_env, settings):
    """The checks agree with what the saga really writes: completed, compensated, stuck."""
    await sync_to_async(sandbox_outage_set)("payment", active=False)
    completed = await sync_to_async(make_order)()
    declined = await sync_to_async(make_order)(fault_plan={"payment": "decline"})
    shipping_failed = await sync_to_async(make_order)(fault_plan={"shipping": "fail"})
    assert await saga_env.result(completed) == "completed"
    assert await saga_env.result(declined) == "compensated"
    assert await saga_env.result(shipping_failed) == "compensated"
    await sync_to_async(sandbox_outage_set)("payment", active=True)
    stuck = await sync_to_async(make_order)()
    await wait_for(lambda: order_state(stuck.pk).saga_status == SagaStatus.STUCK, message="stuck")
    await sync_to_async(sandbox_outage_set)("payment", active=False)

    deadline = time.monotonic() + 20
    while True:  # visibility may still list a just-finished workflow as running
        run = await sync_to_async(run_now)()
        if run.clean or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert await sync_to_async(findings)(run) == set()
    assert run.clean
    # The stuck saga's workflow and the completed order's delivery tracker are running.
    assert run.workflows_checked == 2


def test_findings_beyond_the_cap_are_counted_not_stored(temporal_server, settings):
    settings.RECONCILIATION_MAX_PER_KIND = 2
    for _ in range(5):
        running_order_rows()
    run = run_now()
    assert run.discrepancy_count == 5
    assert run.discrepancies.count() == 2
    assert run.overflow == {Kind.MISSING_WORKFLOW: 3}


def test_executing_a_finished_run_again_changes_nothing(temporal_server):
    running_order_rows()
    run = run_now()
    again = reconciliation_run_execute(run_id=run.pk)
    assert again.finished_at == run.finished_at
    assert again.discrepancies.count() == 1


# --- on demand from the page, through Celery ------------------------------------------------


async def test_run_on_demand_from_the_page_shows_the_report_with_links(celery_worker, temporal_server, client_as):
    order = await sync_to_async(running_order_rows)()
    client = await sync_to_async(client_as)("operator")
    response = await sync_to_async(client.post)(reverse("background:reconciliation_request"))
    assert response.status_code == 302
    run = await sync_to_async(ReconciliationRun.objects.get)()
    assert response.url == reverse("background:reconciliation_detail", args=[run.pk])
    assert run.requested_by_id is not None

    await wait_for(lambda: ReconciliationRun.objects.get(pk=run.pk).state == "finished", message="run finished")
    page = await sync_to_async(client.get)(response.url)
    html = page.content.decode()
    assert page.status_code == 200
    assert 'data-result="discrepancies"' in html
    assert "open order without a running workflow" in html.lower()
    assert f'href="{reverse("orders:detail", args=[order.pk])}"' in html
    assert order.number in html
    assert "hx-trigger" not in html  # finished: the report stops polling


def test_a_clean_run_says_so_on_its_page(client_as, temporal_server):
    run = run_now()
    page = client_as("viewer").get(reverse("background:reconciliation_detail", args=[run.pk]))
    html = page.content.decode()
    assert 'data-result="clean"' in html and "Clean:" in html
    listing = client_as("viewer").get(reverse("background:reconciliation_list")).content.decode()
    assert "clean" in listing
    assert "Run reconciliation now" not in listing  # viewers may look, not run


def test_viewers_cannot_start_a_run(client_as):
    response = client_as("viewer").post(reverse("background:reconciliation_request"))
    assert response.status_code == 403
    assert not ReconciliationRun.objects.exists()


def test_report_page_queries_do_not_grow_with_discrepancies(client_as):
    viewer = client_as("viewer")

    def report_queries(count: int) -> int:
        run = ReconciliationRun.objects.create(trigger="manual", state="finished", discrepancy_count=count,
                                               finished_at=timezone.now(), started_at=timezone.now())
        product = make_product()
        for _ in range(count):
            order = make_order(start_saga=False)
            Discrepancy.objects.create(run=run, kind=Kind.MONEY_MISMATCH, order=order, detail="x")
            Discrepancy.objects.create(run=run, kind=Kind.STOCK_DRIFT, product=product, detail="y")
        with CaptureQueriesContext(connection) as queries:
            assert viewer.get(reverse("background:reconciliation_detail", args=[run.pk])).status_code == 200
        return len(queries)

    assert report_queries(2) == report_queries(25)


def test_unknown_run_is_a_plain_404(client_as):
    response = client_as("viewer").get(reverse("background:reconciliation_detail", args=[999999]))
    assert response.status_code == 404
