"""/healthz and /readyz: the web process's probes. /readyz reports the database, Redis and
Temporal each, and answers 503 when one of them is down (pointed at a closed port here)."""

import socket
import time

import pytest
from django.db import connections
from django.test import Client

pytestmark = pytest.mark.django_db(transaction=True)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nobody listens once it is closed


@pytest.fixture
def ready(temporal_server, settings):
    settings.HEALTH_CHECK_TIMEOUT_SECONDS = 2
    return settings


def readyz() -> tuple[int, dict, float]:
    started = time.monotonic()
    response = Client().get("/readyz")
    return response.status_code, response.json(), time.monotonic() - started


def test_healthz_is_alive_and_public():
    response = Client().get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]


def test_readyz_reports_each_dependency(ready):
    status, body, _ = readyz()
    assert status == 200, body
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "redis", "temporal"}
    assert all(check["ok"] for check in body["checks"].values())


def test_readyz_fails_when_the_database_is_down(ready, monkeypatch):
    db = connections.settings["default"]
    if db["ENGINE"].endswith("sqlite3"):
        monkeypatch.setitem(db, "NAME", "/nonexistent-dir/for-readyz/db.sqlite3")
    else:
        monkeypatch.setitem(db, "HOST", "127.0.0.1")
        monkeypatch.setitem(db, "PORT", str(closed_port()))
    status, body, took = readyz()
    assert status == 503 and body["status"] == "unavailable"
    assert body["checks"]["database"]["ok"] is False
    assert body["checks"]["redis"]["ok"] and body["checks"]["temporal"]["ok"]
    assert took < 5


def test_readyz_fails_when_redis_is_down(ready):
    ready.REDIS_URL = f"redis://127.0.0.1:{closed_port()}/0"
    status, body, took = readyz()
    assert status == 503
    assert body["checks"]["redis"] == {"ok": False, "error": "ConnectionError", "ms": body["checks"]["redis"]["ms"]}
    assert body["checks"]["database"]["ok"] and body["checks"]["temporal"]["ok"]
    assert took < 5


def test_readyz_fails_when_temporal_is_down(ready):
    ready.TEMPORAL_ADDRESS = f"127.0.0.1:{closed_port()}"
    status, body, took = readyz()
    assert status == 503
    assert body["checks"]["temporal"]["ok"] is False
    assert body["checks"]["database"]["ok"] and body["checks"]["redis"]["ok"]
    # The error names a class only: no address or message reaches an anonymous caller.
    assert "127.0.0.1" not in str(body)
    assert took < 5


def test_worker_health_probes_the_metrics_port(settings, capsys):
    from django.core.management import call_command

    from orders.saga.worker import worker_metrics_start

    settings.METRICS_ENABLED = True
    server = worker_metrics_start("127.0.0.1:0")
    try:
        call_command("worker_health", "worker", "--address", f"127.0.0.1:{server.server_port}")
        assert "worker healthy" in capsys.readouterr().out
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(SystemExit) as down:
        call_command("worker_health", "celery", "--address", f"127.0.0.1:{closed_port()}", "--timeout", "1")
    assert down.value.code == 1 and "celery unhealthy" in capsys.readouterr().err
    settings.WORKER_METRICS_ADDRESS = ""
    with pytest.raises(SystemExit) as nothing:
        call_command("worker_health", "worker")
    assert nothing.value.code == 2


def test_beat_health_wants_a_recent_sweep(settings, capsys):
    from datetime import timedelta

    from django.core.management import call_command
    from django.utils import timezone

    from ops.models import SweepRun

    settings.SWEEPER_INTERVAL_SECONDS = 60
    with pytest.raises(SystemExit) as never:
        call_command("beat_health")
    assert never.value.code == 1 and "never" in capsys.readouterr().err
    SweepRun.objects.create(started_at=timezone.now() - timedelta(minutes=10))
    with pytest.raises(SystemExit):
        call_command("beat_health")
    SweepRun.objects.create(started_at=timezone.now() - timedelta(seconds=30))
    call_command("beat_health")
    assert "beat healthy" in capsys.readouterr().out
