"""Worker processes for tests that need a real process: its own imports, its own death.

`worker_env` points a child process at the test database, Redis and Temporal server and at
the given task queues. tests/crash_worker.py is a worker that dies (os._exit) right after a
chosen activity has committed, once, as a SIGKILL at that point would.
"""

import os
import subprocess
import sys
from pathlib import Path

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def database_url(*, application_name: str = "") -> str:
    """The test database, as DATABASE_URL for a child process; on Postgres its sessions can
    carry `application_name`, so they can be told from this process's own."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    auth = (db["USER"] or "") + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    url = f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    return f"{url}?application_name={application_name}" if application_name else url


def worker_env(*, temporal_address: str, orders_queue: str, payments_queue: str, **extra: str) -> dict:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "ordersite.settings",
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "TEMPORAL_ADDRESS": temporal_address,
        "SAGA_TASK_QUEUE": orders_queue,
        "PAYMENTS_TASK_QUEUE": payments_queue,
        "SAGA_RETRY_INITIAL_SECONDS": str(settings.SAGA_RETRY_INITIAL_SECONDS),
        "SANDBOX_FAULTS_ENABLED": "1",
        "EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def start_worker_process(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def stop(process: subprocess.Popen) -> str:
    """Kill it (if still alive) and return what it printed."""
    if process.poll() is None:
        process.kill()
    out, _ = process.communicate(timeout=30)
    return out or ""
