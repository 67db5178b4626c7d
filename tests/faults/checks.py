"""The fault suite's checks once the sagas are at rest, in SQL over our tables and the
sandbox's books; the run's record (FaultRun) and its printed figures."""

from __future__ import annotations

import email
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from django.apps import apps
from django.db import connection

from .plans import PlacedOrder
from .settling import TERMINAL, outcome_of

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


# Subjects of the delivery tracker's emails (orders/services/delivery.py).
DELIVERY_EMAIL_WORDS = ("has shipped", "has been delivered")


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
    worker_sessions_dropped: int = 0  # by the database outage
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
    # Order confirmations per customer: the delivery tracker's shipped and delivered emails
    # (issue 8) go out at their own pace and are checked by "no email sent twice" only.
    sent_to = {"file backend": Counter(), "mailer book": Counter()}
    for (to, subject), n in sent_files.items():
        if not any(words in subject for words in DELIVERY_EMAIL_WORDS):
            sent_to["file backend"][to] += n
    for (to, subject), n in sent_book.items():
        if not any(words in subject for words in DELIVERY_EMAIL_WORDS):
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
