"""Multiprocess mode (PROMETHEUS_MULTIPROC_DIR): what several processes of one kind record
adds up in one scrape. Two plain processes, then a real prefork Celery worker whose two pool
processes run the tasks and whose main process serves them on CELERY_METRICS_ADDRESS."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent

RECORD = """
import os, django
django.setup()
from orders import metrics
for _ in range({n}):
    metrics.step_attempt_observe(step="charge", compensation=False, outcome="succeeded", seconds=0.02)
metrics.websocket_opened("OrderConsumer")
print(os.getpid())
"""


def child_env(metrics_dir: Path, **extra) -> dict:
    return {
        **os.environ, "DJANGO_SETTINGS_MODULE": "ordersite.settings", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "METRICS_ENABLED": "1", "PYTHONUNBUFFERED": "1", **extra,
    }


def collected(metrics_dir: Path) -> dict:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(metrics_dir))
    return {(s.name, frozenset(s.labels.items())): s.value for family in registry.collect() for s in family.samples}


def test_two_processes_add_up(tmp_path):
    pids = []
    for n in (3, 4):
        done = subprocess.run([sys.executable, "-c", RECORD.format(n=n)], cwd=ROOT, env=child_env(tmp_path),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        pids.append(int(done.stdout.split()[-1]))
    values = collected(tmp_path)
    labels = frozenset({"step": "charge", "kind": "step", "outcome": "succeeded"}.items())
    assert values[("ordersite_saga_step_attempts_total", labels)] == 7
    assert values[("ordersite_saga_step_duration_seconds_count", labels)] == 7
    assert values[("ordersite_saga_step_duration_seconds_sum", labels)] == pytest.approx(0.14)
    # Open sockets count only live processes: a process that is gone is marked dead.
    sockets = ("ordersite_websockets_open", frozenset({"consumer": "OrderConsumer"}.items()))
    assert values[sockets] == 2
    multiprocess.mark_process_dead(pids[0], path=str(tmp_path))
    assert collected(tmp_path)[sockets] == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_celery_pool_processes_add_up_on_the_celery_port(tmp_path):
    from ordersite.celery import app

    queue, port = f"metrics-{uuid.uuid4().hex[:8]}", free_port()
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "ordersite", "worker", "--pool", "prefork", "--concurrency", "2",
         "--queues", queue, "--include", "tests.metrics_tasks", "--loglevel", "INFO", "--without-heartbeat",
         "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=child_env(tmp_path, REDIS_URL=settings.REDIS_URL, CELERY_METRICS_ADDRESS=f"127.0.0.1:{port}"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        results = [app.send_task("tests.metrics_pid", args=(0.3,), queue=queue) for _ in range(8)]
        pids = {result.get(timeout=60) for result in results}
        assert len(pids) == 2, f"both pool processes should have run tasks: {pids}"
        labels = frozenset({"task": "tests.metrics_pid", "state": "succeeded"}.items())
        deadline = time.monotonic() + 10
        while True:  # the success signal fires just after the result is stored
            values = scrape(port)
            if values.get(("ordersite_celery_tasks_total", labels)) == 8 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert values[("ordersite_celery_tasks_total", labels)] == 8
        assert values[("ordersite_celery_tasks_total", frozenset({"task": "tests.metrics_pid",
                                                                   "state": "started"}.items()))] == 8
        assert values[("ordersite_celery_task_duration_seconds_count",
                       frozenset({"task": "tests.metrics_pid"}.items()))] == 8
        # The probe docker-compose uses for Celery answers too (run, as there, without the
        # metrics directory: a probe's own files would pile up in it).
        probe_env = {k: v for k, v in child_env(tmp_path).items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        probe = subprocess.run([sys.executable, "manage.py", "worker_health", "celery", "--address",
                                f"127.0.0.1:{port}"], cwd=ROOT, env=probe_env, capture_output=True,
                               text=True, timeout=60)
        assert probe.returncode == 0, probe.stderr
    finally:
        worker.terminate()
        try:
            output, _ = worker.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            output, _ = worker.communicate()
    assert "Traceback" not in output, output[-3000:]
