"""Alerts: staff are told (webhook, email) once per incident, again only after the repeat
interval while it stays open, within an hourly limit with a summary beyond it; the incident
resolves when its condition clears. Real sagas get stuck through the sandbox's faults; the
webhook is a real HTTP server on localhost; email goes through Django's locmem backend."""

import json
import threading
from pathlib import Path
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from asgiref.sync import sync_to_async
from django.core import mail
from django.db import connection, transaction
from django.db.models import F
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from ops.alerts.services import alerts_check
from ops.models import AlertIncident, AlertMessage, StallFlag
from ops.reconciliation import reconciliation_run_create, reconciliation_run_execute
from ops.stalls.classify import Finding, Kind as StallKind
from ops.stalls.services import stall_flags_record
from orders.models import FollowUp, Order, Product
from orders.services.saga import saga_step_started
from orders.status import OrderStatus, SagaStatus
from ops.services import saga_retry
from sandbox.adapters import sandbox_outage_set

from .conftest import order_state, wait_for
from .factories import make_order, make_product
from .saga_states import order_running, order_stuck

# The celery_worker fixture, defined once for all modules that use it.
pytest_plugins = ["tests.background_fixtures"]
pytestmark = pytest.mark.django_db(transaction=True)

Kind = AlertIncident.Kind
BASE = "https://shop.example"


class WebhookServer:
    """A chat webhook on localhost: records each POSTed JSON body, answers the next queued
    status (200 once the queue is empty)."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.content_types: list[str] = []
        self.statuses: list[int] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                server.bodies.append(json.loads(raw))
                server.content_types.append(self.headers["Content-Type"])
                status = server.statuses.pop(0) if server.statuses else 200
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok" if status == 200 else b"error")

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/hooks/alerts"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def webhook(settings):
    server = WebhookServer()
    settings.ALERTS_WEBHOOK_URL = server.url
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _alert_settings(settings):
    settings.PUBLIC_BASE_URL = BASE
    settings.ALERTS_WEBHOOK_URL = ""
    settings.ALERTS_EMAIL_TO = []
    settings.ALERTS_REPEAT_MINUTES = 240
    settings.ALERTS_MAX_PER_HOUR = 20
    settings.ALERTS_FOLLOWUP_AGE_MINUTES = 60
    settings.ALERTS_SEND_MAX_ATTEMPTS = 3


def check(now=None):
    return alerts_check(now=now)


def order_link(order) -> str:
    return BASE + reverse("orders:detail", args=[order.pk])


def alert_emails() -> list:
    return [m for m in mail.outbox if "staff@example.com" in m.to]


README = Path(__file__).resolve().parent.parent / "README.md"


def _shape(value):
    """The structure of a JSON value with its strings' words left out, except block types."""
    if isinstance(value, dict):
        return {k: (v if k == "type" else _shape(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return type(value).__name__


def readme_example() -> dict:
    section = README.read_text().split("## Alerts", 1)[1]
    return json.loads(section.split("```json", 1)[1].split("```", 1)[0])


def assert_documented_payload(body: dict, *, link: str, words: str) -> None:
    """The JSON the README documents: Slack's {"text", "blocks"}, the link in both."""
    assert _shape(body) == _shape(readme_example())
    assert words in body["text"] and link in body["text"]
    section, context = body["blocks"]
    assert section["type"] == "section" and section["text"]["type"] == "mrkdwn"
    assert f"<{link}|" in section["text"]["text"]
    assert context["type"] == "context" and context["elements"][0]["type"] == "mrkdwn"


# --- real sagas -----------------------------------------------------------------------------


async def test_a_stuck_saga_is_alerted_once_again_after_the_repeat_interval_and_resolved_by_retry(
        saga_env, operator_user, webhook, settings):
    await sync_to_async(sandbox_outage_set)("payment", active=True)
    order = await sync_to_async(make_order)()
    await wait_for(lambda: order_state(order.pk).saga_status == SagaStatus.STUCK, message="stuck")

    result = await sync_to_async(check)()
    assert (result.opened, result.messages, result.delivered) == (1, 1, 1)
    assert len(webhook.bodies) == 1
    assert webhook.content_types[0].startswith("application/json")
    assert_documented_payload(webhook.bodies[0], link=order_link(order), words="stuck at charge payment")

    # Still stuck: checks go on, nobody is told again.
    for _ in range(3):
        await sync_to_async(check)()
    assert len(webhook.bodies) == 1

    later = timezone.now() + timedelta(minutes=settings.ALERTS_REPEAT_MINUTES + 1)
    await sync_to_async(check)(later)
    assert len(webhook.bodies) == 2
    assert "Still open since" in webhook.bodies[1]["text"]
    await sync_to_async(check)(later + timedelta(minutes=1))
    assert len(webhook.bodies) == 2

    await sync_to_async(sandbox_outage_set)("payment", active=False)
    await sync_to_async(saga_retry)(order_id=order.pk, actor=operator_user)
    assert await saga_env.result(order) == "completed"
    result = await sync_to_async(check)(later + timedelta(minutes=2))
    assert result.resolved == 1
    incident = await sync_to_async(AlertIncident.objects.get)()
    assert (incident.kind, incident.key, incident.sends) == (Kind.SAGA_STUCK, str(order.pk), 2)
    assert incident.resolved_at is not None
    assert len(webhook.bodies) == 2


async def test_a_stuck_compensation_is_emailed_to_staff_with_its_link(saga_env, settings):
    settings.ALERTS_EMAIL_TO = ["staff@example.com"]
    order = await sync_to_async(make_order)(fault_plan={"inventory": "fail", "refund": "fail"})
    await wait_for(lambda: order_state(order.pk).saga_status == SagaStatus.COMPENSATION_STUCK,
                   message="compensation stuck")

    await sync_to_async(check)()
    await sync_to_async(check)()
    emails = alert_emails()
    assert len(emails) == 1
    assert "compensation stuck at refund payment" in emails[0].subject
    assert order_link(order) in emails[0].body
    message = await sync_to_async(AlertMessage.objects.get)()
    assert (message.email_state, message.webhook_state) == ("sent", "off")


async def test_a_followup_is_alerted_only_once_older_than_the_threshold(saga_env, webhook, settings):
    order = await sync_to_async(make_order)(fault_plan={"notify": "fail"})
    await wait_for(lambda: order_state(order.pk).saga_status == SagaStatus.NEEDS_FOLLOWUP, message="follow-up")

    await sync_to_async(check)()
    assert webhook.bodies == []
    followup = await sync_to_async(FollowUp.objects.get)(order=order)
    old_enough = followup.created_at + timedelta(minutes=settings.ALERTS_FOLLOWUP_AGE_MINUTES, seconds=1)
    await sync_to_async(check)(old_enough)
    assert len(webhook.bodies) == 1
    assert "follow-up open since" in webhook.bodies[0]["text"]
    assert order_link(order) in webhook.bodies[0]["text"]
    incident = await sync_to_async(AlertIncident.objects.get)()
    assert (incident.kind, incident.key, incident.order_id) == (Kind.FOLLOWUP_OVERDUE, str(followup.pk), order.pk)


# --- conditions without a workflow ------------------------------------------------------------


def test_a_saga_flagged_by_the_sweeper_is_alerted_and_resolved_when_it_moves(webhook):
    order = make_order(start_saga=False)
    order_running(order, step="charge")
    order = Order.objects.get(pk=order.pk)
    stall_flags_record(orders=[order], findings={order.pk: Finding(StallKind.NO_POLLER, "No worker polls payments.",
                                                                   "running")}, now=timezone.now())
    check()
    assert len(webhook.bodies) == 1
    assert "flagged by the sweeper: no worker polling" in webhook.bodies[0]["text"]
    assert "No worker polls payments." in webhook.bodies[0]["text"]
    assert order_link(order) in webhook.bodies[0]["text"]

    # The saga records a newer event: its flag no longer counts, the incident resolves.
    saga_step_started(order_id=order.pk, step="charge", step_key=f"{order.workflow_id}:charge", attempt=2,
                      compensation=False)
    assert check().resolved == 1
    assert AlertIncident.objects.get().resolved_at is not None
    assert StallFlag.objects.count() == 1


def test_a_reconciliation_discrepancy_links_its_report_and_resolves_after_a_clean_run(webhook, temporal_server):
    product = make_product(stock=10)
    Product.objects.filter(pk=product.pk).update(on_hand=F("on_hand") - 2, reserved=F("reserved") + 2)
    run = reconciliation_run_execute(run_id=reconciliation_run_create(trigger="manual").pk)
    assert run.discrepancy_count == 1

    check()
    check()
    assert len(webhook.bodies) == 1
    report = BASE + reverse("background:reconciliation_detail", args=[run.pk])
    assert_documented_payload(webhook.bodies[0], link=report, words="stock counters disagree with the stock ledger")

    # The same drift found by the next run stays one incident.
    second = reconciliation_run_execute(run_id=reconciliation_run_create(trigger="manual").pk)
    assert check().opened == 0
    assert len(webhook.bodies) == 1
    assert AlertIncident.objects.get().url.endswith(reverse("background:reconciliation_detail", args=[second.pk]))

    Product.objects.filter(pk=product.pk).update(on_hand=F("on_hand") + 2, reserved=F("reserved") - 2)
    clean = reconciliation_run_execute(run_id=reconciliation_run_create(trigger="manual").pk)
    assert clean.discrepancy_count == 0
    assert check().resolved == 1


# --- rate limit, channels, failures -------------------------------------------------------------


def stuck_orders(count: int) -> list[Order]:
    orders = []
    for _ in range(count):
        order = make_order(start_saga=False)
        order_stuck(order, step="charge", error="Payment gateway unavailable")
        orders.append(order)
    return orders


def test_over_the_hourly_limit_the_rest_go_out_as_one_summary_and_none_is_lost(webhook, settings):
    settings.ALERTS_MAX_PER_HOUR = 3
    orders = stuck_orders(5)
    now = timezone.now()
    assert check(now).messages == 3
    singles, summary = webhook.bodies[:2], webhook.bodies[2]
    assert [order_link(o) in b["text"] for o, b in zip(orders, singles)] == [True, True]
    assert summary["text"].startswith("3 more alerts (over the limit of 3 messages an hour)")
    assert "3 × saga stuck" in summary["text"] and BASE + reverse("ops:stuck") in summary["text"]
    listed = json.dumps(summary["blocks"])
    assert all(order_link(o) in listed for o in orders[2:])

    # The hour's budget is spent: a new incident waits (still due), it is not dropped.
    late = stuck_orders(1)[0]
    assert check(now + timedelta(minutes=5)).messages == 0
    assert len(webhook.bodies) == 3
    assert AlertIncident.objects.get(key=str(late.pk)).last_sent_at is None
    assert check(now + timedelta(minutes=61)).messages == 1
    assert order_link(late) in webhook.bodies[3]["text"]
    # Every incident was told exactly once.
    assert sorted(AlertIncident.objects.values_list("sends", flat=True)) == [1] * 6
    assert all(i.messages.count() == 1 for i in AlertIncident.objects.all())


def test_a_failed_webhook_is_retried_next_check_and_no_channel_sends_twice(webhook, settings):
    settings.ALERTS_EMAIL_TO = ["staff@example.com"]
    webhook.statuses = [500]
    order = stuck_orders(1)[0]
    result = check()
    assert (result.delivered, result.failed) == (1, 1)
    message = AlertMessage.objects.get()
    assert (message.webhook_state, message.email_state, message.attempts) == ("pending", "sent", 1)
    assert "HTTP 500" in message.last_error

    result = check()
    assert (result.messages, result.delivered, result.failed) == (0, 1, 0)
    check()
    assert len(webhook.bodies) == 2  # the failed post and its retry
    assert webhook.bodies[0] == webhook.bodies[1] and order_link(order) in webhook.bodies[1]["text"]
    assert len(alert_emails()) == 1
    message.refresh_from_db()
    assert (message.webhook_state, message.email_state) == ("sent", "sent")


def test_an_unreachable_webhook_is_given_up_after_the_attempts_and_kept_as_failed(settings):
    settings.ALERTS_WEBHOOK_URL = "http://127.0.0.1:9/unreachable"  # the discard port: refused
    stuck_orders(1)
    for _ in range(settings.ALERTS_SEND_MAX_ATTEMPTS + 2):
        check()
    message = AlertMessage.objects.get()
    assert (message.webhook_state, message.attempts) == ("failed", settings.ALERTS_SEND_MAX_ATTEMPTS)
    assert "webhook unreachable" in message.last_error


def test_without_a_channel_incidents_are_kept_and_sent_once_one_is_configured(settings):
    stuck_orders(1)
    assert check().messages == 0
    assert AlertIncident.objects.get().last_sent_at is None
    settings.ALERTS_EMAIL_TO = ["staff@example.com"]
    assert check().messages == 1
    assert len(alert_emails()) == 1


def test_the_check_costs_the_same_few_queries_whatever_the_number_of_incidents(webhook):
    def queries_of_a_quiet_check() -> list[str]:
        check()  # opens and sends what is new
        with CaptureQueriesContext(connection) as ctx:
            check()  # found, synced, nothing due
        return [q["sql"] for q in ctx.captured_queries]

    stuck_orders(2)
    few = queries_of_a_quiet_check()
    stuck_orders(10)
    many = queries_of_a_quiet_check()
    assert len(few) == len(many) <= 15, "\n".join(many)


# --- Celery, admin, settings -------------------------------------------------------------------


def test_beat_queues_the_check_by_name_and_a_real_worker_runs_it(celery_worker, settings, webhook):
    from celery import current_app

    from ops import jobs

    entry = settings.CELERY_BEAT_SCHEDULE["alerts-check"]
    assert entry["task"] == jobs.ALERTS_CHECK and entry["schedule"] == settings.ALERTS_INTERVAL_SECONDS
    stuck_orders(1)
    assert current_app.send_task(entry["task"]).get(timeout=60)["messages"] == 1
    assert len(webhook.bodies) == 1


def test_a_check_already_running_or_alerts_off_sends_nothing(settings, webhook):
    from ops import tasks

    stuck_orders(1)
    with tasks.single_flight("alerts-check", ttl=30) as lock:
        assert lock is not None
        assert tasks.alerts_check.run() == {"skipped": "another alerts check is running"}
    settings.ALERTS_ENABLED = False
    assert tasks.alerts_check.run() == {"skipped": "ALERTS_ENABLED is off"}
    assert webhook.bodies == []
    settings.ALERTS_ENABLED = True
    assert tasks.alerts_check.run()["messages"] == 1


@pytest.mark.parametrize("role", ["viewer", "support", "operator"])
def test_staff_roles_see_incidents_in_the_admin_read_only_with_the_settings(client_as, settings, role):
    settings.ALERTS_EMAIL_TO = ["staff@example.com"]
    order = stuck_orders(1)[0]
    check()
    # A chat webhook's path is its secret: the admin shows the host only.
    settings.ALERTS_WEBHOOK_URL = "https://hooks.example/services/T000/B000/SECRET"
    client = client_as(role)
    url = reverse("admin:ops_alertincident_changelist")
    page = client.get(url).content.decode()
    assert f"Order {order.number} stuck at charge payment" in page
    assert "staff@example.com" in page and "ALERTS_REPEAT_MINUTES" in page
    assert "https://hooks.example/" in page and "SECRET" not in page
    assert client.get(url + "?kind__exact=saga_flagged").content.decode().count("stuck at charge") == 0
    assert client.get(url + "?state=open").status_code == 200
    incident = AlertIncident.objects.get()
    assert client.get(reverse("admin:ops_alertincident_change", args=[incident.pk])).status_code == 200
    assert client.post(reverse("admin:ops_alertincident_delete", args=[incident.pk]), {"post": "yes"}).status_code == 403
    assert client.get(reverse("admin:ops_alertincident_add")).status_code == 403
    assert client.get(reverse("admin:ops_alertmessage_changelist")).status_code == 200


def test_a_bad_webhook_url_refuses_to_start_with_a_clear_message(tmp_path):
    from .test_sandbox_app import _manage

    result = _manage(tmp_path, "check", SANDBOX_ENABLED="1", ALERTS_WEBHOOK_URL="hooks.slack.com/services/x")
    assert result.returncode != 0
    assert "ALERTS_WEBHOOK_URL must be an http:// or https:// URL" in result.stderr


def test_bad_alert_addresses_refuse_to_start_with_a_clear_message(tmp_path):
    from .test_sandbox_app import _manage

    result = _manage(tmp_path, "check", SANDBOX_ENABLED="1", ALERTS_EMAIL_TO="ops@example.com, on-call team")
    assert result.returncode != 0
    assert "ALERTS_EMAIL_TO must be comma-separated email addresses; not addresses: on-call team" in result.stderr


def test_admin_lists_cost_the_same_queries_with_more_incidents(client_as, settings):
    settings.ALERTS_EMAIL_TO = ["staff@example.com"]
    client = client_as("viewer")

    def queries(url: str) -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(url).status_code == 200
        return len(ctx.captured_queries)

    urls = [reverse("admin:ops_alertincident_changelist"), reverse("admin:ops_alertmessage_changelist")]
    stuck_orders(2)
    check()
    few = [queries(url) for url in urls]
    stuck_orders(10)
    check()
    assert [queries(url) for url in urls] == few


def _plan_reads_by_index(queryset, table: str) -> str:
    """The query plan, with sequential scans made as costly as the planner allows: if the
    table is still read whole, no index can serve the query."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("SET LOCAL enable_seqscan = off")
        plan = queryset.explain()
    if connection.vendor == "postgresql":
        assert f"Seq Scan on {table}" not in plan, plan
    else:  # SQLite: a whole-table read is "SCAN <table>" without "USING ... INDEX"
        lines = [line for line in plan.splitlines() if f" {table}" in line]
        assert lines and all("INDEX" in line for line in lines), plan
    return plan


def test_each_condition_is_read_through_an_index():
    from ops.alerts import conditions

    now = timezone.now()
    _plan_reads_by_index(conditions.stuck_sagas_query(), "orders_order")
    _plan_reads_by_index(conditions.flagged_sagas_query(), "ops_stallflag")
    _plan_reads_by_index(conditions.overdue_followups_query(now), "orders_followup")
    _plan_reads_by_index(conditions.latest_finished_run_query()[:1], "ops_reconciliationrun")
    _plan_reads_by_index(AlertIncident.objects.filter(resolved_at=None), "ops_alertincident")


def test_an_outage_with_two_thousand_stuck_sagas_sends_the_hours_budget_and_counts_the_rest(webhook, settings):
    from .background_support import healthy_orders_create, order_rows_create

    healthy_orders_create(5000)
    order_rows_create(2000, saga_status=SagaStatus.STUCK, status=OrderStatus.PROCESSING)
    result = check()
    assert (result.opened, result.messages, result.delivered) == (2000, 20, 20)
    assert webhook.bodies[-1]["text"].startswith("1981 more alerts (over the limit of 20 messages an hour)")
    assert "1981 × saga stuck" in webhook.bodies[-1]["text"]
    # Every incident is in exactly one message; the next check finds nothing new to send.
    assert AlertMessage.incidents.through.objects.count() == 2000
    assert AlertIncident.objects.filter(sends=1).count() == 2000
    assert check().messages == 0
    assert len(webhook.bodies) == 20
