"""Metrics after real sagas: the web /metrics (behind its token), the worker's port with the
Temporal SDK's own port beside it, and Celery's port; counters and histograms by label.

The test process keeps one registry for the whole run (single-process mode), so every check
compares a scrape after the sagas with one before.
"""

import asyncio
import socket
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from asgiref.sync import sync_to_async
from django.test import Client as DjangoClient
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client

from orders.models import Order
from orders.saga.worker import build_workers, temporal_runtime, worker_metrics_start

from .conftest import wait_for
from .factories import make_order, make_product
from .invariants import assert_invariants
from .temporal_server import end_open_workflows

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "scrape-token-for-tests"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(scrape: dict, name: str, **labels) -> float:
    return scrape.get((name, frozenset(labels.items())), 0.0)


def delta(before: dict, after: dict, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def web_scrape(token: str = TOKEN) -> dict:
    response = DjangoClient().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return samples(response.content.decode())


def http_scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def metrics_on(settings):
    settings.METRICS_ENABLED = True
    settings.METRICS_TOKEN = TOKEN


async def test_web_metrics_after_real_sagas(saga_env, metrics_on):
    before = await sync_to_async(web_scrape)()
    product = await sync_to_async(make_product)(stock=5)
    completed = await sync_to_async(make_order)(products=[(product, 1)])
    declined = await sync_to_async(make_order)(products=[(product, 1)], fault_plan={"payment": "decline"})
    assert await saga_env.result(completed) == "completed"
    assert await saga_env.result(declined) == "compensated"
    # A path that matches no route is one series, whatever the path.
    assert (await sync_to_async(DjangoClient().get)("/no-such-page/")).status_code == 404
    after = await sync_to_async(web_scrape)()

    # Orders by outcome, with their end-to-end duration.
    assert delta(before, after, "ordersite_sagas_finished_total", outcome="completed") == 1
    assert delta(before, after, "ordersite_sagas_finished_total", outcome="compensated") == 1
    assert delta(before, after, "ordersite_saga_duration_seconds_count", outcome="completed") == 1
    assert delta(before, after, "ordersite_saga_duration_seconds_sum", outcome="completed") > 0
    # Each step's attempts and duration, by outcome; the declined charge failed once.
    for step in ("validate", "reserve", "charge"):
        assert delta(before, after, "ordersite_saga_step_attempts_total", step=step, kind="step",
                     outcome="succeeded") == (2 if step != "charge" else 1), step
    for step in ("confirm", "ship", "notify"):
        assert delta(before, after, "ordersite_saga_step_attempts_total", step=step, kind="step",
                     outcome="succeeded") == 1, step
    assert delta(before, after, "ordersite_saga_step_attempts_total", step="charge", kind="step", outcome="failed") == 1
    assert delta(before, after, "ordersite_saga_step_duration_seconds_count", step="ship", kind="step",
                 outcome="succeeded") == 1
    assert delta(before, after, "ordersite_saga_step_duration_seconds_bucket", step="ship", kind="step",
                 outcome="succeeded", le="+Inf") == 1
    # The declined saga released its reservation: one compensation, which worked.
    assert delta(before, after, "ordersite_saga_compensations_total", step="reserve", outcome="succeeded") == 1
    assert delta(before, after, "ordersite_saga_step_attempts_total", step="reserve", kind="compensation",
                 outcome="succeeded") == 1
    # The outside world: two charges (one declined), one parcel booked.
    assert delta(before, after, "ordersite_outside_calls_total", service="gateway", operation="charge") == 2
    assert delta(before, after, "ordersite_outside_call_duration_seconds_count", service="gateway",
                 operation="charge") == 2
    assert delta(before, after, "ordersite_outside_calls_total", service="carrier", operation="book_parcel") == 1
    errors = {dict(labels)["error"]: v - before.get((name, labels), 0) for (name, labels), v in after.items()
              if name == "ordersite_outside_call_errors_total" and dict(labels)["operation"] == "charge"}
    # Errors of other kinds counted by earlier tests in this process stay where they were.
    assert {error: n for error, n in errors.items() if n} == {"PaymentDeclined": 1}
    # Requests by route name and status.
    assert delta(before, after, "ordersite_http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert delta(before, after, "ordersite_http_requests_total", route="metrics", method="GET", status="200") == 1
    assert delta(before, after, "ordersite_http_request_duration_seconds_count", route="metrics", method="GET") == 1
    # Read from the database at scrape time: nothing waits for staff.
    for status in ("stuck", "compensation_stuck", "needs_followup"):
        assert value(after, "ordersite_sagas_waiting", saga_status=status) == 0
        assert value(after, "ordersite_saga_stuck_oldest_age_seconds", saga_status=status) == 0
    assert value(after, "ordersite_followups_open") == 0
    assert ("ordersite_sweeper_last_run_timestamp_seconds", frozenset()) in after
    assert value(after, "ordersite_reconciliation_discrepancies", kind="money_mismatch") == 0


async def test_followup_and_operator_action_metrics(saga_env, metrics_on, operator_user):
    """A saga waiting for staff shows in the gauges (with its age), then the operator's action."""
    from ops.services import followup_resolve

    before = await sync_to_async(web_scrape)()
    order = await sync_to_async(make_order)(fault_plan={"notify": "fail"})
    await wait_for(lambda: Order.objects.get(pk=order.pk).saga_status == "needs_followup", message="follow-up")
    waiting = await sync_to_async(web_scrape)()
    assert value(waiting, "ordersite_sagas_waiting", saga_status="needs_followup") == 1
    assert value(waiting, "ordersite_followups_open") == 1
    assert value(waiting, "ordersite_followup_oldest_age_seconds") > 0
    assert value(waiting, "ordersite_saga_stuck_oldest_age_seconds", saga_status="needs_followup") > 0
    assert delta(before, waiting, "ordersite_sagas_stuck_total", step="notify", saga_status="needs_followup") == 1

    await sync_to_async(followup_resolve)(order_id=order.pk, actor=operator_user, reason="phoned the customer")
    assert await saga_env.result(order) == "completed"
    after = await sync_to_async(web_scrape)()
    assert delta(before, after, "ordersite_operator_actions_total", action="resolved", outcome="sent") == 1
    assert delta(before, after, "ordersite_saga_operator_answers_total", action="resolved", outcome="applied") == 1
    assert value(after, "ordersite_followups_open") == 0
    assert value(after, "ordersite_sagas_waiting", saga_status="needs_followup") == 0


async def test_stuck_saga_metrics_until_the_operator_compensates(saga_env, metrics_on, operator_user, settings):
    from ops.services import saga_compensate
    from sandbox.adapters import sandbox_outage_set

    settings.CIRCUIT_BREAKER_MIN_CALLS = 1000  # this saga gives up on its own attempts
    before = await sync_to_async(web_scrape)()
    await sync_to_async(sandbox_outage_set)("payment", active=True)
    try:
        order = await sync_to_async(make_order)()
        await wait_for(lambda: Order.objects.get(pk=order.pk).saga_status == "stuck", message="stuck")
        stuck = await sync_to_async(web_scrape)()
    finally:
        await sync_to_async(sandbox_outage_set)("payment", active=False)
    assert value(stuck, "ordersite_sagas_waiting", saga_status="stuck") == 1
    assert value(stuck, "ordersite_saga_stuck_oldest_age_seconds", saga_status="stuck") > 0
    assert delta(before, stuck, "ordersite_sagas_stuck_total", step="charge", saga_status="stuck") == 1
    failed = delta(before, stuck, "ordersite_saga_step_attempts_total", step="charge", kind="step", outcome="failed")
    assert failed >= 2
    assert delta(before, stuck, "ordersite_outside_call_errors_total", service="gateway", operation="charge",
                 error="GatewayUnavailable") == failed

    await sync_to_async(saga_compensate)(order_id=order.pk, actor=operator_user, reason="customer gave up")
    assert await saga_env.result(order) == "compensated"
    after = await sync_to_async(web_scrape)()
    assert value(after, "ordersite_sagas_waiting", saga_status="stuck") == 0
    assert delta(before, after, "ordersite_operator_actions_total", action="compensate", outcome="sent") == 1
    assert delta(before, after, "ordersite_saga_operator_answers_total", action="compensate", outcome="applied") == 1
    assert delta(before, after, "ordersite_sagas_finished_total", outcome="compensated") == 1


def test_web_metrics_refused_without_the_token(db, settings):
    settings.METRICS_ENABLED = True
    settings.METRICS_TOKEN = TOKEN
    client = DjangoClient()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong-token").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Basic {TOKEN}").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}x").status_code == 401
    refused = client.get("/metrics")
    assert refused["WWW-Authenticate"].startswith("Bearer") and b"ordersite_" not in refused.content
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
    # No token configured: the endpoint does not exist.
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 404
    assert client.get("/metrics").status_code == 404
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ENABLED = False
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 404


async def test_worker_port_and_temporal_sdk_port_after_a_real_saga(transactional_db, temporal_server, settings):
    """The worker process's own port (our step and gateway metrics) and the SDK's port, as
    run_worker starts them, with a saga run by workers on that runtime."""
    settings.METRICS_ENABLED = True
    sdk_port = free_port()
    server = worker_metrics_start("127.0.0.1:0")
    runtime = temporal_runtime(f"127.0.0.1:{sdk_port}")
    assert server is not None and runtime is not None
    suffix = uuid.uuid4().hex[:8]
    settings.SAGA_TASK_QUEUE = f"orders-{suffix}"
    settings.PAYMENTS_TASK_QUEUE = f"payments-{suffix}"
    client = await Client.connect(temporal_server.address, runtime=runtime)
    executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="metrics-activity")
    workers = build_workers(client, orders_queue=settings.SAGA_TASK_QUEUE,
                            payments_queue=settings.PAYMENTS_TASK_QUEUE, executor=executor)
    runs = [asyncio.create_task(w.run()) for w in workers]
    try:
        before = samples(await asyncio.to_thread(http_scrape, server.server_port))
        order = await sync_to_async(make_order)()
        handle = client.get_workflow_handle(order.workflow_id)
        assert await asyncio.wait_for(handle.result(), 60) == "completed"
        after = samples(await asyncio.to_thread(http_scrape, server.server_port))
        sdk = await asyncio.to_thread(http_scrape, sdk_port)
    finally:
        await end_open_workflows(client)
        await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
        await asyncio.gather(*runs, return_exceptions=True)
        executor.shutdown(wait=True)
        server.shutdown()
        server.server_close()
    await sync_to_async(assert_invariants)()

    assert delta(before, after, "ordersite_saga_step_attempts_total", step="charge", kind="step",
                 outcome="succeeded") == 1
    assert delta(before, after, "ordersite_outside_calls_total", service="gateway", operation="charge") == 1
    assert delta(before, after, "ordersite_sagas_finished_total", outcome="completed") == 1
    # The worker's port serves no database state (only the web's /metrics reads it).
    assert not any(name == "ordersite_followups_open" for name, _ in after)

    sdk_samples = samples(sdk)
    queue_done = [labels for (name, labels), v in sdk_samples.items()
                  if name == "temporal_workflow_completed_total" and v >= 1]
    assert any(dict(labels).get("task_queue") == settings.SAGA_TASK_QUEUE for labels in queue_done), sdk[:2000]
    charges = {dict(labels)["task_queue"]: v for (name, labels), v in sdk_samples.items()
               if name == "temporal_activity_execution_latency_count"
               and dict(labels).get("activity_type") == "charge_payment"}
    assert charges == {settings.PAYMENTS_TASK_QUEUE: 1}, sdk[:2000]


def test_celery_tasks_counted_by_name_and_state_on_the_celery_port(db, settings):
    from ordersite.celery import app
    from ops.metrics import celery_metrics_server_start

    settings.METRICS_ENABLED = True
    settings.CELERY_METRICS_ADDRESS = "127.0.0.1:0"
    name_ok, name_boom = f"tests.metrics_ok_{uuid.uuid4().hex[:6]}", f"tests.metrics_boom_{uuid.uuid4().hex[:6]}"

    @app.task(name=name_ok)
    def ok():
        return 1

    @app.task(name=name_boom)
    def boom():
        raise ValueError("expected by the test")

    server = celery_metrics_server_start()
    try:
        for _ in range(3):
            ok.apply()
        boom.apply()
        scrape = samples(http_scrape(server.server_port))
    finally:
        server.shutdown()
        server.server_close()
    assert value(scrape, "ordersite_celery_tasks_total", task=name_ok, state="started") == 3
    assert value(scrape, "ordersite_celery_tasks_total", task=name_ok, state="succeeded") == 3
    assert value(scrape, "ordersite_celery_tasks_total", task=name_boom, state="failed") == 1
    assert value(scrape, "ordersite_celery_tasks_total", task=name_boom, state="succeeded") == 0
    assert value(scrape, "ordersite_celery_task_duration_seconds_count", task=name_ok) == 3


def test_metrics_off_records_nothing(db, settings):
    from orders import metrics

    settings.METRICS_ENABLED = False
    before = metrics.STEP_ATTEMPTS.labels("validate", "step", "off-check")._value.get()
    metrics.step_attempt_observe(step="validate", compensation=False, outcome="off-check", seconds=0.1)
    assert metrics.STEP_ATTEMPTS.labels("validate", "step", "off-check")._value.get() == before
    assert metrics.http_server_start("127.0.0.1:0", default_port=9101) is None
    settings.METRICS_ENABLED = True
    metrics.step_attempt_observe(step="validate", compensation=False, outcome="off-check", seconds=0.1)
    assert metrics.STEP_ATTEMPTS.labels("validate", "step", "off-check")._value.get() == before + 1


async def test_live_socket_metrics(metrics_on, staff_user):
    """Open sockets, frames sent and the delay from a saga event's commit to its frame."""
    from orders.live import reader_connection_close

    from .test_order_consumers import new_order, record_event
    from .websockets import open_socket, receive_until

    viewer = await sync_to_async(staff_user)("viewer")
    order = await sync_to_async(new_order)(running_at="charge")
    before = await sync_to_async(web_scrape)()
    communicator = await open_socket(f"/ws/orders/{order.pk}/", viewer)
    try:
        await communicator.receive_from(timeout=5)  # the page on connect
        opened = await sync_to_async(web_scrape)()
        assert delta(before, opened, "ordersite_websockets_open", consumer="OrderDetailConsumer") == 1
        detail = f"Charged 10.00 EUR (ref-{uuid.uuid4().hex[:8]})"
        await sync_to_async(record_event)(order.pk, step="charge", kind="succeeded", detail=detail)
        await receive_until(communicator, detail)
        after = await sync_to_async(web_scrape)()
    finally:
        await communicator.disconnect()
        await sync_to_async(reader_connection_close)()
    assert delta(before, after, "ordersite_websocket_frames_sent_total", consumer="OrderDetailConsumer") == 2
    # One frame answered a committed event: its delay is measured, and it is short.
    assert delta(before, after, "ordersite_websocket_commit_to_frame_seconds_count", consumer="OrderDetailConsumer") == 1
    assert 0 < delta(before, after, "ordersite_websocket_commit_to_frame_seconds_sum",
                     consumer="OrderDetailConsumer") < 5
    closed = await sync_to_async(web_scrape)()
    assert value(closed, "ordersite_websockets_open", consumer="OrderDetailConsumer") == value(
        before, "ordersite_websockets_open", consumer="OrderDetailConsumer")


async def test_run_worker_serves_both_ports_and_answers_its_probe(transactional_db, temporal_server, settings):
    """A real `manage.py run_worker` process, as production starts it: our metrics and the
    SDK's, each on its own port, after a saga it ran; `worker_health` answers 0 against it."""
    import subprocess
    import sys

    from .worker_processes import ROOT, start_worker_process, stop, worker_env

    app_port, sdk_port = free_port(), free_port()
    suffix = uuid.uuid4().hex[:8]
    settings.SAGA_TASK_QUEUE, settings.PAYMENTS_TASK_QUEUE = f"orders-{suffix}", f"payments-{suffix}"
    env = worker_env(temporal_address=temporal_server.address, orders_queue=settings.SAGA_TASK_QUEUE,
                     payments_queue=settings.PAYMENTS_TASK_QUEUE, METRICS_ENABLED="1",
                     WORKER_METRICS_ADDRESS=f"127.0.0.1:{app_port}",
                     TEMPORAL_SDK_METRICS_ADDRESS=f"127.0.0.1:{sdk_port}")
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    worker = start_worker_process(["manage.py", "run_worker"], env)
    try:
        order = await sync_to_async(make_order)()
        client = await Client.connect(temporal_server.address)
        assert await asyncio.wait_for(client.get_workflow_handle(order.workflow_id).result(), 60) == "completed"
        app = samples(await asyncio.to_thread(http_scrape, app_port))
        sdk = samples(await asyncio.to_thread(http_scrape, sdk_port))
        probe = await asyncio.to_thread(
            subprocess.run, [sys.executable, "manage.py", "worker_health", "worker", "--address",
                             f"127.0.0.1:{app_port}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    finally:
        output = stop(worker)
    assert value(app, "ordersite_saga_step_attempts_total", step="notify", kind="step", outcome="succeeded") == 1
    assert value(app, "ordersite_sagas_finished_total", outcome="completed") == 1
    assert any(name == "temporal_workflow_completed_total" and dict(labels)["task_queue"] == settings.SAGA_TASK_QUEUE
               for name, labels in sdk), output[-2000:]
    assert probe.returncode == 0, probe.stderr


def test_web_metrics_without_the_database_still_serve_the_process_samples(transactional_db, metrics_on, monkeypatch):
    """The database-backed gauges are left out (and say so); the scrape itself works."""
    from django.db import connection

    healthy = web_scrape()
    assert value(healthy, "ordersite_scrape_collector_up", collector="SagaStateCollector") == 1
    assert value(healthy, "ordersite_scrape_collector_up", collector="BackgroundStateCollector") == 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    connection.close()
    if connection.vendor == "sqlite":
        monkeypatch.setitem(connection.settings_dict, "NAME", "/nonexistent-dir/metrics/db.sqlite3")
    else:
        monkeypatch.setitem(connection.settings_dict, "HOST", "127.0.0.1")
        monkeypatch.setitem(connection.settings_dict, "PORT", str(closed))
    try:
        # The view itself uses no database (the token is a setting), so it answers.
        down = web_scrape()
    finally:
        connection.close()
        monkeypatch.undo()
    assert value(down, "ordersite_scrape_collector_up", collector="SagaStateCollector") == 0
    assert value(down, "ordersite_scrape_collector_up", collector="BackgroundStateCollector") == 0
    assert not any(name == "ordersite_followups_open" for name, _ in down)
    assert any(name == "ordersite_http_requests_total" for name, _ in down)
