"""Issue 9, item 3: traces.

With an in-memory span exporter in place of OTLP, on a real Temporal dev server, worker,
database and Redis: the create-order request, the Temporal client's StartWorkflow, the
workflow and every step's activity, the database and the gateway's and carrier's calls are
spans of one trace. An operator's retry (its own request, its own trace) reaches the step
it unblocks: the workflow's HandleSignal span, in the saga's trace, links to it, and the
charge runs again after it. With OTEL_EXPORTER_OTLP_ENDPOINT unset, tracing stays off.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.urls import reverse
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from orders.models import Order
from orders.status import SagaStatus
from ordersite import tracing

from .conftest import order_state, wait_for
from .test_structured_logs import log_lines  # noqa: F401  (the fixture)
from .factories import create_form_data, make_product

ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ["tests.background_fixtures"]
STEP_ACTIVITIES = ["validate_order", "reserve_inventory", "charge_payment", "confirm_inventory",
                   "arrange_shipping", "notify_customer"]


@pytest.fixture(scope="module")
def span_exporter():
    exporter = InMemorySpanExporter()
    assert tracing.tracing_start(service="tests", exporter=exporter)
    yield exporter
    tracing.tracing_stop()


@pytest.fixture
def spans(span_exporter):
    span_exporter.clear()
    return span_exporter


def _in_trace(exporter: InMemorySpanExporter, trace_id: int) -> list:
    return [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]


def _request_span(exporter: InMemorySpanExporter, method: str, path_part: str):
    found = [s for s in exporter.get_finished_spans()
             if s.kind == SpanKind.SERVER and s.attributes.get("http.method", s.attributes.get("http.request.method"))
             == method and path_part in s.name]
    assert len(found) == 1, [s.name for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    return found[0]



async def _create_order(client, staff_user, fault_preset: str = "") -> tuple[Order, object]:
    product = await sync_to_async(make_product)(price="12.00", stock=5)
    await sync_to_async(client.force_login)(await sync_to_async(staff_user)("operator"))
    response = await sync_to_async(client.post)(reverse("orders:create"), create_form_data(product, fault_preset=fault_preset))
    assert response.status_code == 302, response.content.decode()[:500]
    return await sync_to_async(Order.objects.get)(), response


async def test_one_trace_from_the_create_request_to_every_activity_and_the_gateway(
    spans, saga_env, client, staff_user, log_lines,
):
    order, _ = await _create_order(client, staff_user)
    assert await saga_env.result(order) == "completed"
    request = _request_span(spans, "POST", "orders/new/")
    # Spans end after the workflow's result is known (the last local activity's): wait for them.
    await wait_for(lambda: "RunActivity:notify_customer" in {s.name for s in _in_trace(spans, request.context.trace_id)},
                   message="the last activity's span")
    in_trace = _in_trace(spans, request.context.trace_id)
    names = {s.name for s in in_trace}
    by_id = {s.context.span_id: s for s in in_trace}

    assert "StartWorkflow:OrderSaga" in names and "RunWorkflow:OrderSaga" in names, sorted(names)
    for name in STEP_ACTIVITIES:
        assert f"RunActivity:{name}" in names, (name, sorted(names))

    # The gateway's charge and the carrier's booking run inside their activities' spans.
    charge = [s for s in in_trace if s.name == "payment.charge"]
    assert len(charge) == 1 and charge[0].kind == SpanKind.CLIENT
    assert by_id[charge[0].parent.span_id].name == "RunActivity:charge_payment"
    assert charge[0].attributes["ordersite.order_id"] == order.pk
    assert charge[0].attributes["ordersite.idempotency_key"] == f"{order.workflow_id}:charge"
    booking = [s for s in in_trace if s.name == "shipping.book_parcel"]
    assert booking and by_id[booking[0].parent.span_id].name == "RunActivity:arrange_shipping"
    assert "notify.send" in names

    # The database: the activities' queries are spans of the same trace (PostgreSQL, as in
    # production; SQLite has no instrumentation here).
    if connection.vendor == "postgresql":
        queries = [s for s in in_trace if s.attributes.get("db.system") == "postgresql"]
        assert queries, sorted(names)
        assert any(by_id.get(q.parent.span_id) and by_id[q.parent.span_id].name.startswith("RunActivity:")
                   for q in queries if q.parent)

    # The log lines of the request and of every activity carry the trace's id.
    trace_hex = format(request.context.trace_id, "032x")
    story = [line for line in log_lines.events("saga_event") if line["order_id"] == order.pk]
    assert story and all(line["trace_id"] == trace_hex for line in story), story
    assert log_lines.events("order_created")[0]["trace_id"] == trace_hex

    # Every span of the saga has its parent in the trace, up to the request itself.
    roots = [s for s in in_trace if s.parent is None or s.parent.span_id not in by_id]
    assert roots == [request], [s.name for s in roots]


async def test_an_operator_retry_reaches_the_step_it_unblocks(spans, saga_env, client, staff_user):
    order, _ = await _create_order(client, staff_user, "gateway_outage")
    await wait_for(lambda: order_state(order.pk).saga_status == SagaStatus.STUCK, message="stuck at the charge")
    saga_trace = _request_span(spans, "POST", "orders/new/").context.trace_id
    failed_charges = [s for s in _in_trace(spans, saga_trace) if s.name == "payment.charge"]
    assert failed_charges and all(s.status.status_code == StatusCode.ERROR for s in failed_charges)

    response = await sync_to_async(client.post)(reverse("orders:action", args=[order.pk, "retry"]),
                                                {"reason": "gateway is back"})
    assert response.status_code in (200, 302)
    assert await saga_env.result(order) == "completed"
    retry_request = _request_span(spans, "POST", "actions")
    assert retry_request.context.trace_id != saga_trace
    # The signal left the retry's request with its trace in the Temporal headers...
    signal_sent = [s for s in _in_trace(spans, retry_request.context.trace_id) if s.name == "SignalWorkflow:retry"]
    assert len(signal_sent) == 1
    # ...and the workflow's handling of it, in the saga's trace, links back to it.
    await wait_for(lambda: [s for s in _in_trace(spans, saga_trace) if s.name == "HandleSignal:retry"],
                   message="the signal's span in the saga's trace")
    handled = [s for s in _in_trace(spans, saga_trace) if s.name == "HandleSignal:retry"]
    assert len(handled) == 1
    assert {link.context.trace_id for link in handled[0].links} == {retry_request.context.trace_id}
    # The step it unblocked: the charge ran again, after the signal, and succeeded.
    after = [s for s in _in_trace(spans, saga_trace)
             if s.name == "payment.charge" and s.start_time > handled[0].start_time]
    assert after and after[-1].status.status_code != StatusCode.ERROR


@pytest.mark.django_db(transaction=True)
def test_a_celery_task_continues_the_trace_that_queued_it(spans, celery_worker):
    from ops import tasks

    with tracing.span("a request queuing a job") as queuing:
        result = tasks.stalled_saga_sweep.delay()
    result.get(timeout=30)
    trace_id = queuing.get_span_context().trace_id
    name = "run/ops.tasks.stalled_saga_sweep"
    run = wait_for_sync(lambda: [s for s in _in_trace(spans, trace_id) if s.name == name], what=name)
    assert len(run) == 1 and run[0].kind == SpanKind.CONSUMER
    if connection.vendor == "postgresql":
        # The sweep's queries belong to the task's span, not to a trace of their own each.
        queries = [s for s in _in_trace(spans, trace_id) if s.attributes.get("db.system") == "postgresql"]
        assert queries and all(q.parent.span_id == run[0].context.span_id for q in queries
                               if q.start_time > run[0].start_time)


def wait_for_sync(found, what: str, timeout: float = 15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


_PROBE = """
import django
django.setup()
from django.conf import settings
from ordersite import tracing
on = tracing.tracing_start(service="web")
middleware = any("opentelemetry" in m for m in settings.MIDDLEWARE)
print(on, middleware, [type(i).__name__ for i in tracing.temporal_interceptors()])
"""


@pytest.mark.parametrize(("endpoint", "expected"), [
    (None, "False False []"),
    ("http://127.0.0.1:9", "True True ['TracingInterceptor']"),
])
def test_tracing_is_on_only_with_an_otlp_endpoint(endpoint, expected):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    if endpoint:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    result = subprocess.run([sys.executable, "-c", _PROBE], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == expected
