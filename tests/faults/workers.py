"""Real `manage.py run_worker` processes for the fault suite: the pool, its supervisor
that restarts whatever died, and the chaos loop that SIGKILLs at random."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from orders.crashpoints import ENV_ONCE_DIR, ENV_POINTS

from ..worker_processes import database_url

REPO = Path(__file__).resolve().parents[2]

WORKER_APPLICATION_NAME = "ordersite-fault-worker"


class WorkerPool:
    """`size` worker processes on the given queues, restarted when they die.

    `kills` counts what killed them: crash:<point> (a crash point fired), chaos (a random
    SIGKILL from the chaos loop), exit:<code> (anything else).
    """

    def __init__(self, *, size: int, work_dir: Path, temporal_address: str, orders_queue: str,
                 payments_queue: str, crash_at: str = "", extra_env: dict | None = None, name: str = "w"):
        self.size = size
        self.work_dir = work_dir
        self.crash_dir = work_dir / "crashes"
        self.mail_dir = work_dir / "mail"
        self.log_dir = work_dir / "logs"
        for d in (self.crash_dir, self.mail_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "ordersite.settings",
            "SANDBOX_ENABLED": "1",
            "SANDBOX_FAULTS_ENABLED": "1",
            # Tagged, so a database outage can drop the system's sessions and not the harness's own.
            "DATABASE_URL": database_url(application_name=WORKER_APPLICATION_NAME),
            "DB_CONN_MAX_AGE": "60",  # as the worker runs in production (Procfile.dev, compose)
            "TEMPORAL_ADDRESS": temporal_address,
            "SAGA_TASK_QUEUE": orders_queue,
            "PAYMENTS_TASK_QUEUE": payments_queue,
            "EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
            "EMAIL_FILE_PATH": str(self.mail_dir),
            ENV_POINTS: crash_at,
            ENV_ONCE_DIR: str(self.crash_dir),
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        self.procs: list[subprocess.Popen | None] = [None] * size
        self.kills: Counter = Counter()
        self.starts = 0
        self._chaos_kills: set[int] = set()  # pids we SIGKILLed on purpose
        self._seen_markers: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._chaos_stop = threading.Event()
        self.chaos_kills_made = 0
        self._threads: list[threading.Thread] = []

    # lifecycle
    def _spawn(self, slot: int) -> None:
        log = open(self.log_dir / f"{self.name}{slot}.log", "ab")
        self.procs[slot] = subprocess.Popen(
            [sys.executable, "manage.py", "run_worker"], cwd=REPO, env=self.env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        self.starts += 1

    def start(self, *, wait_ready: float = 90) -> WorkerPool:
        for slot in range(self.size):
            self._spawn(slot)
        deadline = time.monotonic() + wait_ready
        while time.monotonic() < deadline:
            ready = sum("Temporal workers polling" in self.log(slot) for slot in range(self.size))
            if ready == self.size:
                break
            time.sleep(0.3)
        else:
            raise RuntimeError(f"workers not ready within {wait_ready}s:\n" + self.log_tails())
        self._threads.append(threading.Thread(target=self._supervise, daemon=True, name="fault-supervisor"))
        self._threads[-1].start()
        return self

    def start_chaos(self, *, interval: tuple[float, float], seed: int | None = None) -> None:
        """Kill a random worker every `interval` seconds (uniform in the range)."""
        rng = random.Random(seed)
        self._chaos_stop.clear()  # a second round of chaos (the after-sale phase) after an earlier one

        def chaos():
            while not self._chaos_stop.wait(rng.uniform(*interval)) and not self._stop.is_set():
                self.kill(rng.randrange(self.size))
                self.chaos_kills_made += 1

        self._threads.append(threading.Thread(target=chaos, daemon=True, name="fault-chaos"))
        self._threads[-1].start()

    def stop_chaos(self) -> None:
        self._chaos_stop.set()
        for thread in self._threads:
            if thread.name == "fault-chaos":
                thread.join(5)

    def kill(self, slot: int) -> None:
        with self._lock:
            proc = self.procs[slot]
            if proc is None or proc.poll() is not None:
                return
            self._chaos_kills.add(proc.pid)
            os.kill(proc.pid, signal.SIGKILL)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        for proc in self.procs:
            if proc is None:
                continue
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            else:
                # Died after the supervisor's last look (a late crash point): still counted.
                self.kills[self._why_dead(proc)] += 1

    def _supervise(self) -> None:
        while not self._stop.wait(0.25):
            for slot, proc in enumerate(self.procs):
                if proc is None or proc.poll() is None:
                    continue
                with self._lock:
                    self.kills[self._why_dead(proc)] += 1
                    self._spawn(slot)

    def _why_dead(self, proc: subprocess.Popen) -> str:
        if proc.pid in self._chaos_kills:
            return "chaos"
        for marker in sorted(self.crash_dir.glob("*.fired")):
            if marker.name in self._seen_markers:
                continue
            if f"pid={proc.pid} " in marker.read_text():
                self._seen_markers.add(marker.name)
                return "crash:" + marker.name.removesuffix(".fired")
        return f"exit:{proc.returncode}"

    def fired_points(self) -> list[str]:
        return sorted(m.name.removesuffix(".fired") for m in self.crash_dir.glob("*.fired"))

    # logs
    def log(self, slot: int) -> str:
        path = self.log_dir / f"{self.name}{slot}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_tails(self, lines: int = 15) -> str:
        return "\n".join(f"--- {self.name}{s}\n" + "\n".join(self.log(s).splitlines()[-lines:]) for s in range(self.size))

    def log_count(self, needle: str) -> int:
        return sum(self.log(s).count(needle) for s in range(self.size))
