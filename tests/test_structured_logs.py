"""Issue 9, item 2: structured logs.

Every line is one JSON object in production format, and carries the ids known where it was
written: the request id and user on a request's lines, the order on every line after the
service that loaded it, the workflow, run, activity and attempt on an activity's. A 404 and
a 403 are one warning line each, without a traceback; a crashing activity is logged once,
at error, with its traceback.

The lines are captured from the root logger with the production (JSON) formatter, on a real
Temporal dev server and database.
"""

import io
import json
import logging
import time

import pytest
from asgiref.sync import sync_to_async
from django.urls import reverse
from temporalio import activity

from orders.models import Order
from orders.saga import activities
from orders.saga.shared import StepInput, StepResult
from ordersite.logging_config import structured_formatter

from .conftest import wait_for
from .factories import create_form_data, make_product

pytest_plugins = ["tests.background_fixtures"]


class LogLines:
    """What the app logged during a test, one parsed JSON object per line."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def all(self) -> list[dict]:
        # Every line must parse: a line that is not JSON fails here.
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]

    def events(self, event: str) -> list[dict]:
        return [line for line in self.all() if line.get("event") == event]


@pytest.fixture
def log_lines():
    lines = LogLines()
    handler = logging.StreamHandler(lines.stream)
    handler.setFormatter(structured_formatter(json_lines=True))
    # The filters the app's handler configuration puts on temporalio's activity logger.
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield lines
    finally:
        root.removeHandler(handler)



async def test_an_order_is_followed_from_the_request_to_its_activities_by_its_id(
    saga_env, log_lines, client, staff_user,
):
    product = await sync_to_async(make_product)(price="12.00", stock=5)
    user = await sync_to_async(staff_user)("operator")
    await sync_to_async(client.force_login)(user)

    response = await sync_to_async(client.post)(reverse("orders:create"), create_form_data(product, fault_preset="decline"))
    assert response.status_code == 302, response.content.decode()[:500]
    order = await sync_to_async(Order.objects.get)()
    await wait_for(lambda: log_lines.events("step_failed"), message="the declined charge's log line")

    # The request: its start and end lines, and the service's, share a request id and user.
    created = log_lines.events("order_created")
    assert len(created) == 1
    request_id = created[0]["request_id"]
    assert request_id and created[0]["user_id"] == user.pk
    assert created[0]["order_id"] == order.pk and created[0]["order_number"] == order.number
    finished = [line for line in log_lines.events("request_finished") if line.get("request_id") == request_id]
    assert len(finished) == 1 and finished[0]["order_id"] == order.pk and finished[0]["code"] == 302
    started = log_lines.events("saga_started")
    assert started and started[0]["request_id"] == request_id and started[0]["workflow_id"] == order.workflow_id

    # The activity: the expected decline is one info line, with the order and the workflow run.
    declined = log_lines.events("step_failed")
    assert len(declined) == 1, declined
    line = declined[0]
    assert line["level"] == "info" and "exception" not in line
    assert line["order_id"] == order.pk and line["order_number"] == order.number
    assert line["workflow_id"] == order.workflow_id and line["run_id"]
    assert line["activity"] == "charge_payment" and line["step"] == "charge" and line["attempt"] == 1
    assert line["error_type"] == "PaymentDeclined"
    assert "request_id" not in line  # the worker's context, not the web request's

    # The saga's events, one line each once committed, tell the order's story in the worker.
    await wait_for(lambda: any(e.get("kind") == "finished" for e in log_lines.events("saga_event")),
                   message="the saga's last event line")
    story = [(e.get("step"), e["kind"]) for e in log_lines.events("saga_event") if e["order_id"] == order.pk]
    assert ("validate", "started") in story and ("charge", "failed") in story and story[-1][1] == "finished", story
    assert all(e["workflow_id"] == order.workflow_id for e in log_lines.events("saga_event"))


@pytest.mark.parametrize("role_and_path", [
    ("viewer", "/orders/999999999/"),  # Http404 from the order page
    ("viewer", "/no-such-page/"),  # no URL matches
    ("viewer", "/orders/new/"),  # 403: a viewer may not create orders
])
def test_404_and_403_are_one_warning_line_without_a_traceback(log_lines, client_as, role_and_path):
    role, path = role_and_path
    client = client_as(role)
    response = client.get(path)
    assert response.status_code in (403, 404)
    lines = log_lines.all()
    about_it = [line for line in lines if line.get("request", "").endswith(path) or path in line.get("event", "")]
    assert [line["event"] for line in about_it] == ["request_finished"], lines
    finished = about_it[0]
    assert finished["level"] == "warning" and finished["code"] == response.status_code
    assert "Traceback" not in log_lines.text and not any("exception" in line for line in lines), log_lines.text


def test_a_crashing_view_is_logged_once_at_error_with_its_traceback(log_lines, client_as, monkeypatch):
    from ops.order_pages.views import list as list_view

    def broken_selector(*args, **kwargs):
        raise RuntimeError("the order list broke")

    monkeypatch.setattr(list_view, "order_list", broken_selector)
    client = client_as("viewer")
    client.raise_request_exception = False
    response = client.get("/orders/")
    assert response.status_code == 500
    errors = [line for line in log_lines.all() if line["level"] == "error"]
    assert len(errors) == 1, log_lines.text
    assert errors[0]["event"] == "request_failed" and "RuntimeError: the order list broke" in errors[0]["exception"]
    assert errors[0]["request_id"] and errors[0]["user_id"]
    assert log_lines.text.count("Traceback") == 1


@activity.defn(name="validate_order")
def crashing_validate(inp: StepInput) -> StepResult:
    def broken(attempt: int) -> str:
        raise ZeroDivisionError("a bug in validation")

    return activities._recorded(inp, broken, own_database_only=True)


@pytest.mark.activity_overrides(validate_order=crashing_validate)
async def test_a_crashing_activity_is_logged_once_at_error_with_its_context(saga_env, log_lines):
    from .factories import make_order

    order = await sync_to_async(make_order)()
    await wait_for(lambda: len(log_lines.events("step_crashed")) >= 2, message="two crashed attempts")
    crashed = log_lines.events("step_crashed")[:2]
    assert [line["attempt"] for line in crashed] == [1, 2]
    for line in crashed:
        assert line["level"] == "error" and "ZeroDivisionError: a bug in validation" in line["exception"]
        assert line["order_id"] == order.pk and line["workflow_id"] == order.workflow_id
        assert line["activity"] == "validate_order"
    # temporalio's own "Completing activity as failed" report of the same exception is dropped.
    assert not [line for line in log_lines.all() if "Completing activity as failed" in line.get("event", "")]


@pytest.mark.django_db(transaction=True)
def test_a_failing_celery_task_is_logged_once_at_error_with_its_traceback(log_lines, celery_worker):
    from ops import tasks

    result = tasks.bulk_operation_run.delay(987654321)  # no such operation: a bug, not a retry
    with pytest.raises(Exception, match="does not exist"):
        result.get(timeout=30)
    deadline = time.monotonic() + 10
    while not [line for line in log_lines.all() if line["level"] == "error"] and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # a second report of it would come right after the first
    errors = [line for line in log_lines.all() if line["level"] == "error"]
    assert len(errors) == 1, log_lines.text
    assert errors[0]["event"] == "task_failed" and errors[0]["task_id"] == result.id
    assert "DoesNotExist" in errors[0]["exception"]
    assert log_lines.text.count("Traceback") == 1


def test_log_format_is_chosen_by_environment(monkeypatch):
    from django.core.exceptions import ImproperlyConfigured

    from ordersite.logging_config import json_lines_wanted

    monkeypatch.delenv("LOG_FORMAT", raising=False)
    monkeypatch.delenv("DJANGO_ENV", raising=False)
    assert json_lines_wanted(debug=False) is True
    assert json_lines_wanted(debug=True) is False
    monkeypatch.setenv("DJANGO_ENV", "production")
    assert json_lines_wanted(debug=True) is True
    monkeypatch.setenv("LOG_FORMAT", "console")
    assert json_lines_wanted(debug=False) is False
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(ImproperlyConfigured, match="LOG_FORMAT must be 'json' or 'console'"):
        json_lines_wanted(debug=False)


def test_a_bad_log_level_is_a_clear_message():
    from django.core.exceptions import ImproperlyConfigured

    from ordersite.logging_config import configure

    with pytest.raises(ImproperlyConfigured, match="LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"):
        configure(json_lines=True, level="LOUD")


@pytest.mark.django_db(transaction=True)
def test_a_celery_task_carries_its_id_and_the_context_that_queued_it(log_lines, celery_worker):
    from structlog.contextvars import bound_contextvars

    from ops import tasks

    # As a request that loaded an order and queued a job would have it bound.
    with bound_contextvars(request_id="req-celery-1", order_id=4242):
        result = tasks.stalled_saga_sweep.delay()
    result.get(timeout=30)

    def task_lines():
        return [line for line in log_lines.all() if line.get("task_id") == result.id]

    # task_succeeded is logged just after the result is stored: wait for it.
    deadline = time.monotonic() + 10
    while "task_succeeded" not in {line["event"] for line in task_lines()} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {"task_started", "task_succeeded"} <= {line["event"] for line in task_lines()}, log_lines.text
    for line in task_lines():
        assert line["request_id"] == "req-celery-1" and line["order_id"] == 4242
    # Queued once, logged once.
    assert len([line for line in log_lines.events("task_enqueued") if line["child_task_id"] == result.id]) == 1
