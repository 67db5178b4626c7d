"""The sandbox is an app of its own: installed in dev and tests, absent from production
settings and schema, and nothing in the domain depends on it."""

import ast
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from django.core import mail
from django.urls import reverse

from orders.adapters.base import Notification
from orders.errors import NotificationFailed
from sandbox.adapters import SandboxNotifier, sandbox_outage_set
from sandbox.models import SandboxOutage

from .factories import make_order

ROOT = Path(__file__).resolve().parent.parent
REAL_ADAPTERS = {
    "PAYMENT_GATEWAY": "acme_payments.Gateway",
    "SHIPPING_CARRIER": "acme_shipping.Carrier",
    "CUSTOMER_NOTIFIER": "orders.adapters.email.EmailNotifier",
}


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_nothing_in_orders_imports_the_sandbox():
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "orders").rglob("*.py"))
        if any(name == "sandbox" or name.startswith("sandbox.") for name in _imported_modules(path))
    ]
    assert offenders == []


DEPLOYED_SECRET_KEY = "k" * 10 + "-a-long-random-value-for-these-tests-0123456789"


def _manage(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """manage.py in a fresh process, with the environment a deployment would give it."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("SANDBOX_", "DJANGO_", "DATABASE_URL")) and k not in REAL_ADAPTERS and k != "DEBUG"}
    base.update(DJANGO_SETTINGS_MODULE="ordersite.settings", ORDERSITE_VAR_DIR=str(tmp_path),
                DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}", SECRET_KEY=DEPLOYED_SECRET_KEY,
                CARRIER_WEBHOOK_SECRET="deployed-carrier-webhook-secret-0123456789abcdef")
    base.update(env)
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=base,
                          capture_output=True, text=True, timeout=120)


def _tables(tmp_path: Path) -> set[str]:
    with sqlite3.connect(tmp_path / "db.sqlite3") as db:
        return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_production_settings_need_real_adapters(tmp_path):
    result = _manage(tmp_path, "check", DEBUG="0")
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "PAYMENT_GATEWAY, SHIPPING_CARRIER, CUSTOMER_NOTIFIER not set" in result.stderr

    result = _manage(tmp_path, "check", DEBUG="0", SANDBOX_FAULTS_ENABLED="1", **REAL_ADAPTERS)
    assert result.returncode != 0
    assert "SANDBOX_FAULTS_ENABLED needs SANDBOX_ENABLED" in result.stderr


@pytest.mark.parametrize("sandbox", ["0", "1"])
def test_migrations_match_the_models_with_and_without_the_sandbox(tmp_path, sandbox):
    result = _manage(tmp_path, "makemigrations", "--check", "--dry-run", SANDBOX_ENABLED=sandbox, **REAL_ADAPTERS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_schema_has_no_sandbox_tables(tmp_path):
    result = _manage(tmp_path, "migrate", "--noinput", DEBUG="0", **REAL_ADAPTERS)
    assert result.returncode == 0, result.stderr
    tables = _tables(tmp_path)
    assert "orders_order" in tables
    assert [t for t in tables if "sandbox" in t] == []


def test_a_dev_database_keeps_its_sandbox_books_through_the_move(tmp_path):
    # A dev database from before the move: the books are orders' tables.
    assert _manage(tmp_path, "migrate", "orders", "0004", "--noinput", DJANGO_ENV="development").returncode == 0
    with sqlite3.connect(tmp_path / "db.sqlite3") as db:
        db.execute("INSERT INTO orders_sandboxpaymentrecord (id, idempotency_key, kind, amount, currency, reference,"
                   " created_at) VALUES (7, 'order-1-ab:charge', 'charge', '12.50', 'EUR', 'sbx_kept', '2026-01-01')")
        db.execute("INSERT INTO orders_sandboxoutage (id, service, active) VALUES (1, 'payment', 1)")

    result = _manage(tmp_path, "migrate", "--noinput", DJANGO_ENV="development")
    assert result.returncode == 0, result.stderr
    tables = _tables(tmp_path)
    assert not {t for t in tables if t.startswith("orders_sandbox")}
    with sqlite3.connect(tmp_path / "db.sqlite3") as db:
        assert db.execute("SELECT id, idempotency_key, reference FROM sandbox_sandboxpaymentrecord").fetchall() == [
            (7, "order-1-ab:charge", "sbx_kept")]
        assert db.execute("SELECT service, active FROM sandbox_sandboxoutage").fetchall() == [("payment", 1)]


@pytest.mark.django_db
def test_the_outage_switch_knows_only_sandbox_services(client_as):
    admin = client_as("admin")
    response = admin.post(reverse("admin:sandbox_sandboxoutage_add"), {"service": "warehouse", "active": "on"})
    assert response.status_code == 200
    assert "Unknown sandbox service warehouse: an outage can switch off payment, shipping." in response.content.decode()
    assert not SandboxOutage.objects.exists()
    with pytest.raises(ValueError, match="unknown sandbox service 'warehouse'"):
        sandbox_outage_set("warehouse", active=True)


@pytest.mark.django_db
def test_sandbox_notifier_injects_the_notify_fault_then_sends_by_email():
    failing = make_order(fault_plan={"notify": "fail"}, start_saga=False)
    with pytest.raises(NotificationFailed, match="sandbox fault"):
        SandboxNotifier().send(Notification(order_id=failing.pk, to="ada@example.com", subject="s", body="b",
                                            idempotency_key=f"{failing.workflow_id}:notify:confirmed"))
    assert mail.outbox == []

    flaky = make_order(fault_plan={"notify": "transient:1"}, start_saga=False)
    notification = Notification(order_id=flaky.pk, to="ada@example.com", subject="Your order", body="b",
                                idempotency_key=f"{flaky.workflow_id}:notify:confirmed")
    with pytest.raises(NotificationFailed, match="call 1 of 1"):
        SandboxNotifier().send(notification)
    SandboxNotifier().send(notification)
    assert [m.subject for m in mail.outbox] == ["Your order"]
