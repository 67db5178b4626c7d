"""The fault suite's machinery: real worker processes, a restartable Temporal dev server,
a database that refuses connections for a while, orders with mixed fault plans, and the
checks afterwards, straight in SQL over our tables and the sandbox's own books.

Used by tests/faults/test_fault_suite.py (CI size) and scripts/fault_suite.py (the large
run). Everything here is synchronous; Django must be set up, with the database the
workers use as the default connection.

The workers are `python manage.py run_worker` subprocesses with their own task queues;
they get SIGKILLed at the crash points of orders/crashpoints.py (each once, across all
workers) and, with `chaos_interval`, at random; a supervisor thread restarts whatever
died. Nothing here weakens a check to make it pass: a failed check is a finding.
"""

from __future__ import annotations

import email
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from django.apps import apps
from django.conf import settings
from django.db import connection

from orders.crashpoints import ENV_ONCE_DIR, ENV_POINTS

REPO = Path(__file__).resolve().parents[2]

# --- the plans ------------------------------------------------------------------------

# What an order's fault plan lets its saga end as, when it is at rest:
# completed | failed | rejected | cancelled | stuck | followup | compensation_stuck
@dataclass(frozen=True)
class PlanKind:
    name: str
    plan: dict
    expect: frozenset
    healthy: bool = False  # nothing wrong outside: it must complete, whatever we kill
    lines: int = 1


def _kind(name, plan, expect, healthy=False, lines=1):
    return PlanKind(name, plan, frozenset(expect), healthy, lines)


PLAN_MIX = [
    _kind("none", {}, {"completed"}, healthy=True),
    _kind("none_2_lines", {}, {"completed"}, healthy=True, lines=2),
    _kind("gateway_blip", {"payment": "transient:1"}, {"completed"}, healthy=True),
    _kind("carrier_blip", {"shipping": "transient:1"}, {"completed"}, healthy=True),
    _kind("carrier_reset", {"shipping": "crash_after:1"}, {"completed"}, healthy=True, lines=2),
    _kind("notify_blip", {"notify": "transient:1"}, {"completed"}, healthy=True),
    _kind("decline", {"payment": "decline"}, {"failed"}),
    # transient:3 exhausts the charge's 3 attempts: stuck, waiting for an operator.
    _kind("gateway_outage", {"payment": "transient:3"}, {"stuck", "completed"}),
    _kind("inventory_failure", {"inventory": "fail"}, {"failed"}),
    _kind("shipping_failure", {"shipping": "fail"}, {"failed"}, lines=2),
    _kind("notify_failure", {"notify": "fail"}, {"followup"}),
    # Issue 7's boundary faults (H7); skipped with a note where this tree lacks them.
    _kind("lost_charge", {"payment": "lost_response:1"}, {"completed"}, healthy=True),
    _kind("lost_charge_then_fail", {"payment": "lost_response:1", "inventory": "fail"}, {"failed"}),
    _kind("lost_refund", {"inventory": "fail", "refund": "lost_response:1"}, {"failed"}),
    _kind("refund_timeouts", {"inventory": "fail", "refund": "transient:2"}, {"failed"}),
    # Compensations that cannot complete wait for staff, visibly (issue 7, case 7).
    _kind("refund_refused", {"inventory": "fail", "refund": "fail"}, {"compensation_stuck"}),
    _kind("cancel_refused", {"shipping": "fail", "shipping_cancel": "fail"}, {"compensation_stuck"}, lines=2),
    _kind("lost_booking", {"shipping": "lost_response:1"}, {"completed"}, healthy=True),
]


def usable_plans(log=print) -> list[PlanKind]:
    """The plans this tree's fault vocabulary knows; unknown ones are skipped, with a note."""
    from orders.faults import FaultPlanInvalid, fault_plan_clean

    usable = []
    for kind in PLAN_MIX:
        try:
            fault_plan_clean(kind.plan)
        except FaultPlanInvalid as exc:
            log(f"fault suite: skipping plan {kind.name!r} {kind.plan}: {exc}")
            continue
        usable.append(kind)
    return usable


# --- processes ------------------------------------------------------------------------


def database_url() -> str:
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = db.get("USER") or ""
    if db.get("PASSWORD"):
        auth += f":{db['PASSWORD']}"
    return f"postgres://{auth}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def is_postgres() -> bool:
    return connection.vendor == "postgresql"


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
            "DATABASE_URL": database_url(),
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
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)

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


def database_refuse_connections(seconds: float) -> None:
    """Postgres: the database refuses new connections and drops its open ones for a while.

    Run from an admin connection to the `postgres` database; this process's own
    connection is dropped too and reopens afterwards.
    """
    import psycopg

    db = settings.DATABASES["default"]
    name = db["NAME"]
    admin = psycopg.connect(
        host=db.get("HOST") or "127.0.0.1", port=db.get("PORT") or 5432, user=db.get("USER") or None,
        password=db.get("PASSWORD") or None, dbname="postgres", autocommit=True,
    )
    try:
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = %s AND pid <> pg_backend_pid()", [name])
        time.sleep(seconds)
    finally:
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        admin.close()
    connection.close()


# --- orders ---------------------------------------------------------------------------


@dataclass
class PlacedOrder:
    order_id: int
    kind: PlanKind


def place_orders(count: int, plans: list[PlanKind], products: list, *, rng: random.Random, tag: str,
                 first_index: int = 0, pace: float = 0) -> list[PlacedOrder]:
    """`count` orders through the app's own service, plans round-robin from a shuffled mix."""
    from orders.services.ordering import LineRequest, order_create

    placed = []
    for i in range(first_index, first_index + count):
        kind = plans[i % len(plans)]
        chosen = rng.sample(products, kind.lines)
        order = order_create(
            customer_name=f"Fault {i}", customer_email=f"c{i}.{tag}@faults.example",
            lines=[LineRequest(product_id=p.pk, quantity=rng.randint(1, 3)) for p in chosen],
            fault_plan=kind.plan, start_saga=True,
        )
        placed.append(PlacedOrder(order.pk, kind))
        if pace:
            time.sleep(pace)  # spread the sagas out, so kills land at every step
    return placed


# --- settling -------------------------------------------------------------------------

AT_REST = {"completed", "failed", "rejected", "cancelled", "stuck", "followup", "compensation_stuck"}
TERMINAL = {"completed", "failed", "rejected", "cancelled"}


def outcome_of(status: str, saga_status: str) -> str:
    if saga_status == "completed" and status in ("completed", "delivered"):
        return "completed"
    if saga_status == "compensated" and status == "failed":
        return "failed"
    if saga_status in ("rejected", "cancelled") and status == saga_status:
        return saga_status
    if saga_status == "stuck":
        return "stuck"
    if saga_status == "needs_followup":
        return "followup"
    if saga_status == "compensation_stuck":
        return "compensation_stuck"
    return f"{saga_status}/{status}"  # in flight, or inconsistent


def order_outcomes(order_ids) -> dict[int, str]:
    order_table = apps.get_model("orders", "Order")._meta.db_table
    with connection.cursor() as cur:
        cur.execute(f"SELECT id, status, saga_status FROM {order_table}")
        rows = cur.fetchall()
    wanted = set(order_ids)
    return {pk: outcome_of(status, saga) for pk, status, saga in rows if pk in wanted}


def workflow_states(order_ids) -> dict[int, tuple[str, int]]:
    """Each order's saga in Temporal: (status name, attempts of a pending workflow task)."""
    from orders.models import Order
    from orders.temporal_client import run_with_client

    ids = dict(Order.objects.filter(pk__in=list(order_ids)).values_list("pk", "workflow_id"))

    async def describe_all(client):
        out = {}
        for pk, wid in ids.items():
            try:
                desc = await client.get_workflow_handle(wid).describe()
                pending = desc.raw_description.pending_workflow_task
                out[pk] = (desc.status.name if desc.status else "?", pending.attempt if pending else 0)
            except Exception as exc:  # not found, server restarting
                out[pk] = (f"error:{type(exc).__name__}", 0)
        return out

    return run_with_client(describe_all, timeout=120)


def settle(placed: list[PlacedOrder], *, timeout: float, quiet: float = 3, log=print) -> dict[int, str]:
    """Wait until every order is at rest in our database and its workflow agrees (closed
    when terminal, running when it waits for staff), then `quiet` seconds more."""
    ids = [p.order_id for p in placed]
    deadline = time.monotonic() + timeout
    last_report = 0.0
    while True:
        connection.close()  # a fresh connection each round: the database may have been away
        try:
            outcomes = order_outcomes(ids)
        except Exception as exc:
            log(f"settle: database not answering ({exc}); waiting")
            time.sleep(1)
            continue
        moving = [pk for pk, o in outcomes.items() if o not in AT_REST]
        if not moving:
            states = workflow_states(ids)
            moving = [pk for pk, o in outcomes.items()
                      if (o in TERMINAL) == (states[pk][0] == "RUNNING")]
        if not moving:
            time.sleep(quiet)
            return order_outcomes(ids)
        if time.monotonic() > deadline:
            log(f"settle: {len(moving)} order(s) not at rest after {timeout:.0f}s: {sorted(moving)[:20]}")
            return order_outcomes(ids)
        if time.monotonic() - last_report > 15:
            last_report = time.monotonic()
            log(f"settle: {len(moving)} order(s) still moving")
        time.sleep(1)


# --- the checks, in SQL ---------------------------------------------------------------

CHECKS = [
    "ledger equals gateway books",
    "money nets per outcome",
    "no key charged twice",
    "refunds never exceed charges",
    "no email sent twice",
    "completed orders emailed once",
    "one finished event per saga",
    "no bookkeeping event twice",
    "sagas end as their plans say",
    "no healthy order stuck",
    "database agrees with Temporal",
    "no workflow task retrying",
    "no broadcast publisher died",
    "stock conserved",
    "terminal sagas consistent",
]


def _table(app_label: str, model: str) -> str:
    return apps.get_model(app_label, model)._meta.db_table


def _model_anywhere(name: str):
    for model in apps.get_models():
        if model.__name__ == name:
            return model
    return None


def _rows(sql: str, params=()) -> list[tuple]:
    with connection.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def emails_sent(mail_dir: Path) -> Counter:
    """Messages the workers handed to Django's file email backend, by (recipient, subject)."""
    sent: Counter = Counter()
    for path in sorted(mail_dir.glob("*.log")):
        for chunk in path.read_text(errors="replace").split("\n" + "-" * 79 + "\n"):
            if not chunk.strip():
                continue
            message = email.message_from_string(chunk)
            sent[(message.get("To", ""), message.get("Subject", ""))] += 1
    return sent


@dataclass
class FaultRun:
    placed: list[PlacedOrder]
    outcomes: dict[int, str] = field(default_factory=dict)
    workflows: dict[int, tuple[str, int]] = field(default_factory=dict)
    violations: dict[str, list[str]] = field(default_factory=dict)
    figures: dict[str, object] = field(default_factory=dict)
    kills: Counter = field(default_factory=Counter)
    skipped: dict[str, str] = field(default_factory=dict)
    mail_dir: Path | None = None
    publisher_deaths: list[str] = field(default_factory=list)  # worker log lines
    temporal_cancelled: set[int] = field(default_factory=set)  # orders cancelled from Temporal

    @property
    def failed_checks(self) -> list[str]:
        return [name for name in CHECKS if self.violations.get(name)]


def run_checks(run: FaultRun) -> None:
    """Fill run.violations: check name -> what is wrong (empty when the check passed)."""
    v: dict[str, list[str]] = {name: [] for name in CHECKS}
    kinds = {p.order_id: p.kind for p in run.placed}
    order_t, pay_t, ev_t = _table("orders", "Order"), _table("orders", "Payment"), _table("orders", "SagaEvent")
    book_model = _model_anywhere("SandboxPaymentRecord")
    book_t = book_model._meta.db_table
    orders = {pk: (status, saga, wid, Decimal(total), email_, number) for pk, status, saga, wid, total, email_, number
              in _rows(f"SELECT id, status, saga_status, workflow_id, total, customer_email, number FROM {order_t}")
              if pk in kinds}

    # Ledger = gateway's books, key by key (kind and amount too).
    ledger = {key: (order_id, kind, Decimal(amount)) for order_id, key, kind, amount
              in _rows(f"SELECT order_id, idempotency_key, kind, amount FROM {pay_t}")}
    books = {key: (kind, Decimal(amount)) for key, kind, amount
             in _rows(f"SELECT idempotency_key, kind, amount FROM {book_t}")}
    order_of_key = {}
    for pk, (_s, _ss, wid, *_rest) in orders.items():
        order_of_key[wid] = pk
    def key_order(key: str):
        return order_of_key.get(key.split(":", 1)[0])
    for key in sorted(set(ledger) | set(books)):
        pk = key_order(key)
        if pk is None:
            continue
        ours, theirs = ledger.get(key), books.get(key)
        if ours is None:
            v["ledger equals gateway books"].append(
                f"order {pk} ({kinds[pk].name}, {run.outcomes.get(pk)}): gateway booked {theirs[0]} {theirs[1]} "
                f"under {key}, our ledger has nothing")
        elif theirs is None:
            v["ledger equals gateway books"].append(f"order {pk}: our ledger has {ours[1]} {key}, the gateway does not")
        elif (ours[1], ours[2]) != theirs:
            v["ledger equals gateway books"].append(f"order {pk}: {key} is {ours[1:]} here, {theirs} at the gateway")

    # Charged minus refunded, on both sides, against the outcome.
    per_order = {side: defaultdict(lambda: defaultdict(Decimal)) for side in ("ledger", "gateway")}
    counts = defaultdict(Counter)
    for key, (pk, kind, amount) in ledger.items():
        if pk in kinds:
            per_order["ledger"][pk][kind] += amount
            counts[("ledger", pk)][kind] += 1
    for key, (kind, amount) in books.items():
        pk = key_order(key)
        if pk is not None:
            per_order["gateway"][pk][kind] += amount
            counts[("gateway", pk)][kind] += 1
    for pk, (status, saga, wid, total, email_, number) in orders.items():
        outcome = run.outcomes.get(pk, outcome_of(status, saga))
        for side in ("ledger", "gateway"):
            charged, refunded = per_order[side][pk]["charge"], per_order[side][pk]["refund"]
            net = charged - refunded
            if outcome == "completed" and net != total:
                v["money nets per outcome"].append(f"order {pk} ({kinds[pk].name}) completed, {side} net {net} != total {total}")
            if outcome in ("failed", "rejected", "cancelled") and net != 0:
                v["money nets per outcome"].append(f"order {pk} ({kinds[pk].name}) {outcome}, {side} net {net} (should be 0)")
            if counts[(side, pk)]["charge"] > 1:
                v["no key charged twice"].append(f"order {pk}: {counts[(side, pk)]['charge']} charges in the {side}")
            if refunded > charged:
                v["refunds never exceed charges"].append(f"order {pk}: {side} refunded {refunded} of {charged}")
    for key, n in _rows(f"SELECT idempotency_key, COUNT(*) FROM {book_t} GROUP BY idempotency_key HAVING COUNT(*) > 1"):
        v["no key charged twice"].append(f"gateway booked {key} {n} times")

    # Emails: the file backend's copies, and the sandbox mailer's own book where it has one.
    sent_files = emails_sent(run.mail_dir) if run.mail_dir else Counter()
    mail_book = _model_anywhere("SandboxEmail")
    sent_book = Counter()
    if mail_book is not None:
        t = mail_book._meta.db_table
        sent_book = Counter({(to, subject): n for to, subject, n
                             in _rows(f'SELECT "to", subject, COUNT(*) FROM {t} GROUP BY "to", subject')})
    run.figures["emails (file backend)"] = sum(sent_files.values())
    if mail_book is not None:
        run.figures["emails (mailer book)"] = sum(sent_book.values())
    sent_to = {"file backend": Counter(), "mailer book": Counter()}
    for (to, _subject), n in sent_files.items():
        sent_to["file backend"][to] += n
    for (to, _subject), n in sent_book.items():
        sent_to["mailer book"][to] += n
    for source, sent in (("file backend", sent_files), ("mailer book", sent_book)):
        for (to, subject), n in sent.items():
            if n > 1:
                v["no email sent twice"].append(f"{to} got {subject!r} {n} times ({source})")
    authoritative = "mailer book" if mail_book is not None else "file backend"
    for pk, (status, saga, wid, total, email_, number) in orders.items():
        outcome = run.outcomes.get(pk)
        n = sent_to[authoritative][email_]
        if outcome == "completed" and n != 1:
            v["completed orders emailed once"].append(f"order {pk} ({kinds[pk].name}) completed, {n} email(s) ({authoritative})")
        if outcome in ("failed", "rejected", "cancelled", "followup") and n:
            v["completed orders emailed once"].append(f"order {pk} {outcome} but {n} email(s) sent")

    # Bookkeeping exactly once.
    finished = Counter({pk: n for pk, n in _rows(
        f"SELECT order_id, COUNT(*) FROM {ev_t} WHERE kind = 'finished' AND step = '' GROUP BY order_id")})
    for pk in orders:
        outcome = run.outcomes.get(pk)
        expected = 1 if outcome in TERMINAL else 0
        if finished[pk] != expected:
            v["one finished event per saga"].append(f"order {pk} ({kinds[pk].name}, {outcome}): {finished[pk]} 'finished' events")
    for pk, step, kind, attempt, n in _rows(
        f"SELECT order_id, step, kind, attempt, COUNT(*) FROM {ev_t} "
        f"WHERE kind IN ('started', 'succeeded', 'finished', 'compensated', 'stuck') "
        f"GROUP BY order_id, step, kind, attempt HAVING COUNT(*) > 1"
    ):
        if pk in kinds:
            v["no bookkeeping event twice"].append(f"order {pk}: {kind} {step or '(saga)'} attempt {attempt} x{n}")

    # Outcomes against the plans; Temporal against our database.
    for pk, kind in kinds.items():
        outcome = run.outcomes.get(pk, "?")
        if outcome not in kind.expect:
            v["sagas end as their plans say"].append(f"order {pk} ({kind.name}): {outcome}, expected {'/'.join(sorted(kind.expect))}")
        if kind.healthy and outcome != "completed":
            v["no healthy order stuck"].append(f"order {pk} ({kind.name}): {outcome}")
        wf_status, task_attempts = run.workflows.get(pk, ("?", 0))
        # A saga cancelled from Temporal compensates, then reports the cancel: CANCELED.
        closed_ok = {"COMPLETED", "CANCELED"} if outcome == "cancelled" else {"COMPLETED"}
        if (outcome in TERMINAL and wf_status not in closed_ok) or (outcome not in TERMINAL and wf_status != "RUNNING"):
            v["database agrees with Temporal"].append(f"order {pk} ({kind.name}): {outcome} here, workflow {wf_status}")
        if task_attempts > 1:
            v["no workflow task retrying"].append(f"order {pk}: workflow task attempt {task_attempts}")

    # A worker whose publisher task died never broadcasts again (issue 7, case 4).
    v["no broadcast publisher died"] = list(run.publisher_deaths)

    # The invariants of tests/invariants.py.
    from tests import invariants

    for name, check in (("stock conserved", invariants.assert_stock_conserved),
                        ("terminal sagas consistent", invariants.assert_terminal_sagas_consistent)):
        try:
            check()
        except AssertionError as exc:
            v[name].append(str(exc))
    run.violations = v


def print_figures(run: FaultRun, out=print) -> None:
    out("")
    out("Fault suite figures")
    out("-" * 72)
    by_kind = defaultdict(Counter)
    for p in run.placed:
        by_kind[p.kind.name][run.outcomes.get(p.order_id, "?")] += 1
    totals = Counter(run.outcomes.get(p.order_id, "?") for p in run.placed)
    out(f"orders: {len(run.placed)}  by outcome: " + ", ".join(f"{k} {n}" for k, n in sorted(totals.items())))
    for name, c in sorted(by_kind.items()):
        out(f"  {name:<24} " + ", ".join(f"{k} {n}" for k, n in sorted(c.items())))
    out(f"kills: {sum(run.kills.values())}  " + ", ".join(f"{k} {n}" for k, n in sorted(run.kills.items())))
    for key, value in run.figures.items():
        out(f"{key}: {value}")
    for key, why in run.skipped.items():
        out(f"skipped: {key}: {why}")
    out("-" * 72)
    passed = 0
    for name in CHECKS:
        problems = run.violations.get(name, [])
        passed += not problems
        out(f"{'FAIL' if problems else 'ok  '}  {name}" + (f"  ({len(problems)})" if problems else ""))
        for line in problems[:8]:
            out(f"        {line}")
        if len(problems) > 8:
            out(f"        ... and {len(problems) - 8} more")
    out(f"checks: {passed} passed, {len(CHECKS) - passed} failed")
    out("-" * 72)


# --- the scenario ---------------------------------------------------------------------


@dataclass
class Scenario:
    orders: int = 24
    workers: int = 3
    crash_points: tuple[str, ...] = ()  # each fires once, in whichever worker gets there first
    chaos_interval: tuple[float, float] | None = None
    temporal_restarts: int = 1
    database_outage_seconds: float = 4  # Postgres only; 0 for none
    settle_timeout: float = 120
    pace: float = 0.2  # seconds between two orders
    # When the charge.after_gateway crash point fires, cancel that order's workflow from
    # Temporal (as from its UI or CLI) while the charge's answer is lost: the gateway holds
    # money our ledger never saw, and the order must end cancelled with it refunded.
    cancel_after_lost_charge: bool = True
    seed: int = 7


def _cancel_when_charge_lost(pool: WorkerPool, run: FaultRun, stop: threading.Event, log=print) -> None:
    """Wait for the charge.after_gateway marker, then cancel its order's workflow in Temporal."""
    from orders.models import Order
    from orders.temporal_client import run_with_client

    marker = pool.crash_dir / "charge.after_gateway.fired"
    while not stop.wait(0.2):
        if not marker.exists():
            continue
        text = marker.read_text()
        if "order=" not in text:
            continue
        order_id = int(text.split("order=")[1].split()[0])
        workflow_id = Order.objects.values_list("workflow_id", flat=True).get(pk=order_id)

        async def cancel(client):
            await client.get_workflow_handle(workflow_id).cancel()

        try:
            run_with_client(cancel, timeout=30)
        except Exception as exc:
            log(f"fault suite: could not cancel order {order_id} from Temporal: {exc}")
            return
        finally:
            connection.close()  # this thread's own; a test database with sessions cannot be dropped
        run.temporal_cancelled.add(order_id)
        run.kills["temporal cancel after lost charge"] += 1
        log(f"fault suite: order {order_id}'s charge answer lost (worker killed); cancelled it from Temporal")
        return


def run_scenario(sc: Scenario, *, server, work_dir: Path, log=print) -> FaultRun:
    """Place orders in waves with the disruptions between them, settle, check.

    `server` is a tests.temporal_server.DevServer with a db_filename (it is restarted).
    Settings (SAGA_TASK_QUEUE, PAYMENTS_TASK_QUEUE, TEMPORAL_ADDRESS, retry interval) must
    already point where the workers will be: the sagas are started from this process.
    """
    from tests.factories import make_product

    rng = random.Random(sc.seed)
    tag = uuid.uuid4().hex[:6]
    plans = usable_plans(log)
    rng.shuffle(plans)
    products = [make_product(price=f"{rng.randint(5, 60)}.00", stock=10_000) for _ in range(4)]
    pool = WorkerPool(
        size=sc.workers, work_dir=work_dir, temporal_address=server.address,
        orders_queue=settings.SAGA_TASK_QUEUE, payments_queue=settings.PAYMENTS_TASK_QUEUE,
        crash_at=",".join(sc.crash_points),
    )
    run = FaultRun(placed=[], mail_dir=pool.mail_dir)
    watcher_stop = threading.Event()
    started = time.monotonic()
    pool.start()
    log(f"fault suite: {sc.workers} workers up in {time.monotonic() - started:.1f}s; plans: "
        + ", ".join(p.name for p in plans))
    try:
        if sc.chaos_interval:
            pool.start_chaos(interval=sc.chaos_interval, seed=sc.seed)
        if sc.cancel_after_lost_charge and "charge.after_gateway" in sc.crash_points:
            threading.Thread(target=_cancel_when_charge_lost, args=(pool, run, watcher_stop, log), daemon=True,
                             name="fault-cancel").start()
        disruptions = ["temporal"] * sc.temporal_restarts
        if sc.database_outage_seconds:
            if is_postgres():
                disruptions.append("database")
            else:
                run.skipped["database refusal"] = "SQLite: a file cannot refuse connections; the CI runs Postgres"
        waves = len(disruptions) + 1
        per_wave = [sc.orders // waves + (1 if i < sc.orders % waves else 0) for i in range(waves)]
        for wave, count in enumerate(per_wave):
            run.placed += place_orders(count, plans, products, rng=rng, tag=tag, first_index=len(run.placed),
                                       pace=sc.pace)
            if wave < len(disruptions):
                time.sleep(2 + rng.random() * 2)  # let the wave get into its steps
                what = disruptions[wave]
                t0 = time.monotonic()
                if what == "temporal":
                    server.restart(kill=True, down_seconds=1)
                    run.kills["temporal dev server"] += 1
                else:
                    database_refuse_connections(sc.database_outage_seconds)
                    run.kills["database refusal"] += 1
                log(f"fault suite: {what} disrupted for {time.monotonic() - t0:.1f}s after wave {wave + 1}")
        log(f"fault suite: {len(run.placed)} orders placed in {time.monotonic() - started:.0f}s; settling")
        if sc.chaos_interval:
            # Keep killing for a while as they run, then let them finish in peace.
            time.sleep(min(20, sc.settle_timeout / 4))
            pool.stop_chaos()
        for placed in run.placed:
            if placed.order_id in run.temporal_cancelled:
                # Cancelled before shipping: whatever its plan, it must end cancelled.
                placed.kind = PlanKind(f"{placed.kind.name}+temporal_cancel", placed.kind.plan,
                                       frozenset({"cancelled"}), healthy=False, lines=placed.kind.lines)
        run.outcomes = settle(run.placed, timeout=sc.settle_timeout, log=log)
        run.workflows = workflow_states([p.order_id for p in run.placed])
    finally:
        watcher_stop.set()
        pool.stop()
    run.kills.update(pool.kills)
    fired = pool.fired_points()
    run.figures["crash points fired"] = ", ".join(fired) or "none"
    missing = sorted(set(sc.crash_points) - set(fired))
    if missing:
        run.figures["crash points never reached"] = ", ".join(missing)
    run.figures["worker starts"] = pool.starts
    run.figures["worker log: 'Task exception was never retrieved'"] = pool.log_count("Task exception was never retrieved")
    run.publisher_deaths = [
        f"{pool.name}{slot}: {line.strip()[:200]}" for slot in range(pool.size)
        for line in pool.log(slot).splitlines() if "coro=<_publisher()" in line
    ]
    run.figures["worker log: 'channel layer publish failed'"] = pool.log_count("channel layer publish failed")
    run.figures["elapsed"] = f"{time.monotonic() - started:.0f}s"
    run_checks(run)
    return run


# --- fresh workers' first broadcast ---------------------------------------------------


def fresh_worker_first_broadcasts(count: int, *, server, work_dir: Path, orders_each: int = 4,
                                  timeout: float = 40, log=print) -> dict:
    """Start `count` fresh workers, each on task queues of its own with `orders_each` sagas
    already waiting there (so its first broadcast comes while workflows are running, as
    after a restart in production), and see whether any event of that worker reaches a
    subscriber of its orders' groups. A worker whose first publish dies never sends one.

    Returns {worker index: None if an event arrived, else what went wrong}.
    """
    import asyncio

    from channels.layers import get_channel_layer

    from orders.broadcast import order_group
    from orders.services.saga import saga_start
    from tests.factories import make_order, make_product

    product = make_product(stock=10_000)
    pools, orders = [], []
    for i in range(count):
        suffix = uuid.uuid4().hex[:6]
        pools.append(WorkerPool(size=1, work_dir=work_dir / f"fresh{i}", temporal_address=server.address,
                                orders_queue=f"fresh-orders-{suffix}", payments_queue=f"fresh-payments-{suffix}",
                                name="fresh"))
        orders.append([make_order(products=[(product, 1)], email=f"fresh{i}.{n}@faults.example", start_saga=False)
                       for n in range(orders_each)])

    results: dict = {}
    subscribed = threading.Event()
    spawned = threading.Event()

    async def listen() -> None:
        layer = get_channel_layer()
        channels = []
        for worker_orders in orders:
            channel = await layer.new_channel()
            for order in worker_orders:
                await layer.group_add(order_group(order.pk), channel)
            channels.append(channel)
        subscribed.set()
        await asyncio.get_running_loop().run_in_executor(None, spawned.wait, 60)

        async def first(i, channel):
            try:
                message = await asyncio.wait_for(layer.receive(channel), timeout)
                return i, None if message.get("type") == "saga.event" else f"unexpected message {message!r:.200}"
            except asyncio.TimeoutError:
                return i, f"no event within {timeout:.0f}s"

        results.update(await asyncio.gather(*(first(i, ch) for i, ch in enumerate(channels))))
        for worker_orders, channel in zip(orders, channels):
            for order in worker_orders:
                await layer.group_discard(order_group(order.pk), channel)

    listener = threading.Thread(target=lambda: asyncio.run(listen()), name="fresh-listener", daemon=True)
    listener.start()
    try:
        if not subscribed.wait(30):
            raise RuntimeError("could not subscribe to the channel layer within 30s")
        # The sagas wait on each worker's queues before the worker exists.
        for pool, worker_orders in zip(pools, orders):
            with override_queues(pool.env["SAGA_TASK_QUEUE"], pool.env["PAYMENTS_TASK_QUEUE"]):
                for order in worker_orders:
                    saga_start(order_id=order.pk)
        for pool in pools:
            pool._spawn(0)  # together, without waiting for the others
        spawned.set()
        listener.join(timeout + 15)
    finally:
        spawned.set()
        for pool in pools:
            pool.stop()
    for i, problem in results.items():
        if problem:
            tail = "\n".join(pools[i].log(0).splitlines()[-8:])
            results[i] = f"{problem}; worker log ends:\n{tail}"
            log(f"fresh worker {i}: {results[i]}")
    if len(results) < count:
        raise RuntimeError(f"the listener ended without results for {count - len(results)} worker(s)")
    return results


class override_queues:
    """Start sagas on given task queues (settings are read when a saga starts)."""

    def __init__(self, orders_queue: str, payments_queue: str):
        self.values = {"SAGA_TASK_QUEUE": orders_queue, "PAYMENTS_TASK_QUEUE": payments_queue}
        self.saved: dict = {}

    def __enter__(self):
        for name, value in self.values.items():
            self.saved[name] = getattr(settings, name)
            setattr(settings, name, value)

    def __exit__(self, *exc):
        for name, value in self.saved.items():
            setattr(settings, name, value)
