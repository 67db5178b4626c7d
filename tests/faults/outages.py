"""Outside disruptions for the fault suite: Postgres refusing connections for a while.
(The Temporal dev server's restart is tests.temporal_server.DevServer.restart.)"""

from __future__ import annotations

import time

from django.conf import settings
from django.db import connection


def is_postgres() -> bool:
    return connection.vendor == "postgresql"


def database_refuse_connections(seconds: float) -> int:
    """Postgres: the database refuses new connections and drops the worker processes' open
    ones for a while (the system under test; the harness's own sessions stay up, or they
    would fail whatever test this process runs next).

    Run from an admin connection to the `postgres` database. Returns how many worker
    sessions it dropped.
    """
    import psycopg

    from .workers import WORKER_APPLICATION_NAME

    db = settings.DATABASES["default"]
    name = db["NAME"]
    admin = psycopg.connect(
        host=db.get("HOST") or "127.0.0.1", port=db.get("PORT") or 5432, user=db.get("USER") or None,
        password=db.get("PASSWORD") or None, dbname="postgres", autocommit=True,
    )
    worker_sessions = ("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s")
    try:
        # Strike while a worker holds a session: between two activities a worker may have
        # none open (Django closes idle ones), and a refusal nobody meets proves nothing.
        deadline = time.monotonic() + 15
        while (admin.execute(worker_sessions, [name, WORKER_APPLICATION_NAME]).fetchone()[0] == 0
               and time.monotonic() < deadline):
            time.sleep(0.05)
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        dropped = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                "WHERE datname = %s AND pid <> pg_backend_pid() AND application_name = %s",
                                [name, WORKER_APPLICATION_NAME]).fetchone()[0]
        time.sleep(seconds)
    finally:
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        admin.close()
    return dropped
