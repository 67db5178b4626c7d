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
    "undone orders told once",
    "one finished event per saga",
    "no bookkeeping event twice",
    "sagas end as their plans say",
    "no healthy order stuck",
    "database agrees with Temporal",
    "no workflow task retrying",
    "no broadcast publisher died",
    "stock conserved",
    "terminal sagas consistent",
    # Issue 8's after-sale paths (tests/faults/after_sale.py); pass vacuously without them.
    "lost parcels refunded once",
    "unanswered returns expired untouched",
    "refunds after a gateway outage made once",
    "refunds emailed once",
    "every return terminal",
]


def _story(ev_t: str, pk: int) -> str:
    """The order's saga events, oldest first: what a failed check needs to be understood
    from the CI log alone (the run's database is gone by the time anyone reads it)."""
    return "\n".join(
        f"    {created:%H:%M:%S.%f} {step or '(saga)'} {kind} #{attempt} [{key or ''}] {detail[:200]}"
        for created, step, kind, attempt, key, detail in _rows(
            f"SELECT created_at, step, kind, attempt, idempotency_key, detail FROM {ev_t} "
            f"WHERE order_id = %s ORDER BY id", [pk])
    )


def _mail_story(pk: int) -> str:
    """The order's notification ledger, oldest first: which attempts failed, and why."""
    return "\n".join(
        f"    {created:%H:%M:%S.%f} notification #{attempt} [{key}] {'sent' if ok else 'failed'} {error[:200]}"
        for created, attempt, key, ok, error in _rows(
            f"SELECT created_at, attempt, idempotency_key, succeeded, error FROM {_table('orders', 'NotificationAttempt')} "
            f"WHERE order_id = %s ORDER BY id", [pk])
    ) or "    (no notification attempt recorded)"


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


# Subjects of the delivery tracker's emails (orders/services/delivery.py) and the return
# saga's refund email (orders/services/return_steps.py): not order confirmations.
DELIVERY_EMAIL_WORDS = ("has shipped", "has been delivered")
REFUND_EMAIL_WORDS = "Your refund for order"
# orders/services/notifications.py OUTCOME_SUBJECTS: a failed, rejected or cancelled order.
OUTCOME_EMAIL_WORDS = ("We couldn't complete your order", "has been cancelled")


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
    after_sale: object | None = None  # after_sale.AfterSale, when the scenario had that phase

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
    # What refunded returns gave back after the sale: a completed order nets its total less that.
    ret_t = _table("orders", "Return")
    returned = defaultdict(Decimal)
    for pk, amount in _rows(f"SELECT order_id, amount FROM {ret_t} WHERE state = 'refunded'"):
        returned[pk] += Decimal(amount)
    for pk, (status, saga, wid, total, email_, number) in orders.items():
        outcome = run.outcomes.get(pk, outcome_of(status, saga))
        for side in ("ledger", "gateway"):
            charged, refunded = per_order[side][pk]["charge"], per_order[side][pk]["refund"]
            net = charged - refunded
            if outcome == "completed" and net != total - returned[pk]:
                v["money nets per outcome"].append(
                    f"order {pk} ({kinds[pk].name}) completed, {side} net {net} != total {total} "
                    f"less {returned[pk]} returned")
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
    # An undone order's customer is told so once, after its compensations (outcome emails).
    told_undone = {"file backend": Counter(), "mailer book": Counter()}

    def confirmation(subject: str) -> bool:
        return (not any(words in subject for words in DELIVERY_EMAIL_WORDS + OUTCOME_EMAIL_WORDS)
                and REFUND_EMAIL_WORDS not in subject)

    for source, sent in (("file backend", sent_files), ("mailer book", sent_book)):
        for (to, subject), n in sent.items():
            if confirmation(subject):
                sent_to[source][to] += n
            elif any(words in subject for words in OUTCOME_EMAIL_WORDS):
                told_undone[source][to] += n
    for source, sent in (("file backend", sent_files), ("mailer book", sent_book)):
        for (to, subject), n in sent.items():
            if n > 1:
                v["no email sent twice"].append(f"{to} got {subject!r} {n} times ({source})")
    authoritative = "mailer book" if mail_book is not None else "file backend"
    untold_followups = {pk for (pk,) in _rows(
        f"SELECT order_id FROM {_table('orders', 'FollowUp')} WHERE kind = 'outcome_untold'")}
    for pk, (status, saga, wid, total, email_, number) in orders.items():
        outcome = run.outcomes.get(pk)
        n = sent_to[authoritative][email_]
        if outcome == "completed" and n != 1:
            v["completed orders emailed once"].append(f"order {pk} ({kinds[pk].name}) completed, {n} email(s) ({authoritative})")
        if outcome in ("failed", "rejected", "cancelled", "followup") and n:
            v["completed orders emailed once"].append(f"order {pk} {outcome} but {n} confirmation(s) sent")
        told = told_undone[authoritative][email_]
        # A customer the mailer refuses (a notify "fail" plan) cannot be emailed: then staff
        # must have the order on their follow-up queue, to reach them another way.
        untold_on_queue = told == 0 and pk in untold_followups
        if pk in untold_followups and kinds[pk].plan.get("notify") != "fail":
            v["undone orders told once"].append(
                f"order {pk} ({kinds[pk].name}) {outcome}: on the queue as untold, yet the mailer takes its mail")
        if told != (1 if outcome in ("failed", "rejected", "cancelled") and not untold_on_queue else 0):
            v["undone orders told once"].append(
                f"order {pk} ({kinds[pk].name}) {outcome}: {told} outcome email(s)\n{_mail_story(pk)}\n{_story(ev_t, pk)}")

    # Bookkeeping exactly once.
    finished = Counter({pk: n for pk, n in _rows(
        f"SELECT order_id, COUNT(*) FROM {ev_t} WHERE kind = 'finished' AND step = '' GROUP BY order_id")})
    for pk in orders:
        outcome = run.outcomes.get(pk)
        expected = 1 if outcome in TERMINAL else 0
        if finished[pk] != expected:
            v["one finished event per saga"].append(f"order {pk} ({kinds[pk].name}, {outcome}): {finished[pk]} 'finished' events")
    # The tracker's shipped and delivered emails record their own 'succeeded' on the ship
    # track (attempt 1, like the booking's): another event, not a second one; the emails
    # are checked once each above ("no email sent twice").
    for pk, step, kind, attempt, n in _rows(
        f"SELECT order_id, step, kind, attempt, COUNT(*) FROM {ev_t} "
        f"WHERE kind IN ('started', 'succeeded', 'finished', 'compensated', 'stuck') "
        f"AND (idempotency_key IS NULL OR (idempotency_key NOT LIKE %s AND idempotency_key NOT LIKE %s)) "
        f"GROUP BY order_id, step, kind, attempt HAVING COUNT(*) > 1",
        ["%:notify:shipped:sent", "%:notify:delivered:sent"],
    ):
        if pk in kinds:
            v["no bookkeeping event twice"].append(
                f"order {pk}: {kind} {step or '(saga)'} attempt {attempt} x{n}\n{_story(ev_t, pk)}")

    # Outcomes against the plans; Temporal against our database.
    for pk, kind in kinds.items():
        outcome = run.outcomes.get(pk, "?")
        if outcome not in kind.expect:
            v["sagas end as their plans say"].append(f"order {pk} ({kind.name}): {outcome}, expected {'/'.join(sorted(kind.expect))}")
        if kind.healthy and outcome != "completed":
            v["no healthy order stuck"].append(f"order {pk} ({kind.name}): {outcome}\n{_story(ev_t, pk)}")
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
    if run.after_sale is not None:
        _after_sale_checks(run, v, orders, kinds, book_t, sent_to_subject=sent_book if mail_book is not None
                           else sent_files)
    run.violations = v


def _after_sale_checks(run: FaultRun, v: dict, orders: dict, kinds: dict, book_t: str, sent_to_subject: Counter) -> None:
    """Issue 8's paths, in SQL over our tables and the sandbox gateway's books."""
    from tests import invariants

    from .after_sale import EXPECTED_RETURN_STATE
    from .plans import LOST_PARCEL, NEVER_ARRIVES, REFUND_GATEWAY_DOWN

    after = run.after_sale
    ret_t, pay_t = _table("orders", "Return"), _table("orders", "Payment")
    ship_t, move_t = _table("orders", "Shipment"), _table("orders", "StockMovement")
    returns = defaultdict(list)  # order id -> [(return id, kind, state, amount, refund key, workflow id)]
    for row in _rows(f"SELECT order_id, id, kind, state, amount, refund_key, workflow_id FROM {ret_t} ORDER BY id"):
        returns[row[0]].append(row[1:5] + (row[5], row[6]))
    books = defaultdict(list)  # refund key -> [(kind, amount)] at the gateway
    for key, kind, amount in _rows(f"SELECT idempotency_key, kind, amount FROM {book_t}"):
        books[key].append((kind, Decimal(amount)))
    ledger = defaultdict(list)
    for key, kind, amount in _rows(f"SELECT idempotency_key, kind, amount FROM {pay_t}"):
        ledger[key].append((kind, Decimal(amount)))
    restocks = defaultdict(Counter)  # key -> product -> quantity put back
    for key, product, quantity in _rows(f"SELECT idempotency_key, product_id, quantity FROM {move_t} "
                                        f"WHERE kind = 'restock'"):
        restocks[key][product] += quantity
    came_back = defaultdict(Counter)  # return id -> product -> sellable quantity
    rl_t, ol_t = _table("orders", "ReturnLine"), _table("orders", "OrderLine")
    for ret_id, product, quantity in _rows(
        f"SELECT rl.return_request_id, ol.product_id, rl.quantity FROM {rl_t} rl "
        f"JOIN {ol_t} ol ON ol.id = rl.order_line_id WHERE rl.sellable"
    ):
        came_back[ret_id][product] += quantity
    shipments = {pk: (state, ended) for pk, state, ended
                 in _rows(f"SELECT order_id, state, tracking_ended_at FROM {ship_t}")}

    for pk, why in after.refused.items():
        v["every return terminal"].append(f"order {pk} ({kinds[pk].name}): staff could not act: {why}")
    not_started = [p.order_id for p in run.placed if p.kind.after_sale and p.order_id not in after.started
                   and p.order_id not in after.refused]
    for pk in not_started:
        v["every return terminal"].append(f"order {pk} ({kinds[pk].name}) never got its after-sale step "
                                          f"(it ended {run.outcomes.get(pk)})")
    check_of = {LOST_PARCEL: "lost parcels refunded once", NEVER_ARRIVES: "unanswered returns expired untouched",
                REFUND_GATEWAY_DOWN: "refunds after a gateway outage made once"}
    for pk, path in sorted(after.started.items()):
        name, label = check_of[path], f"order {pk} ({path})"
        status, saga, wid, total, email_, number = orders[pk]
        rets = returns[pk]
        if len(rets) != 1:
            v[name].append(f"{label}: {len(rets)} returns, expected one")
            continue
        ret_id, kind, state, amount, refund_key, ret_wid = rets[0]
        amount = Decimal(amount)
        if state != EXPECTED_RETURN_STATE[path]:
            v[name].append(f"{label}: return #{ret_id} is {state}, expected {EXPECTED_RETURN_STATE[path]}")
        at_gateway, ours = books.get(refund_key, []), ledger.get(refund_key, [])
        restock_key = f"{wid}:r{ret_id}:restock"
        if path == NEVER_ARRIVES:
            if at_gateway or ours:
                v[name].append(f"{label}: return #{ret_id} expired, yet gateway {at_gateway}, ledger {ours}")
            if restocks[restock_key]:
                v[name].append(f"{label}: return #{ret_id} expired, yet restocked {dict(restocks[restock_key])}")
        else:
            if at_gateway != [("refund", amount)] or ours != [("refund", amount)]:
                v[name].append(f"{label}: return #{ret_id} of {amount}: gateway booked {at_gateway}, "
                               f"our ledger {ours} under its key (expected one refund)")
            refunds_at_gateway = [a for key, rows in books.items() if key.split(":", 1)[0] == wid
                                  for kind_, a in rows if kind_ == "refund"]
            expected_back = total if path == LOST_PARCEL else amount
            if sum(refunds_at_gateway, Decimal(0)) != expected_back or len(refunds_at_gateway) != 1:
                v[name].append(f"{label}: the gateway refunded {refunds_at_gateway} in all, expected {expected_back} "
                               "once")
        if path == LOST_PARCEL:
            ship_state, ended = shipments.get(pk, (None, None))
            if kind != "goodwill" or ship_state != "lost" or ended is None:
                v[name].append(f"{label}: return kind {kind}, shipment {ship_state}, tracking ended {ended}")
            if after.trackers.get(pk) != "COMPLETED":
                v[name].append(f"{label}: its delivery tracker is {after.trackers.get(pk)} in Temporal, not ended")
        if path == REFUND_GATEWAY_DOWN and (not came_back[ret_id] or restocks[restock_key] != came_back[ret_id]):
            v[name].append(f"{label}: return #{ret_id} restocked {dict(restocks[restock_key])} (product: quantity), "
                           f"{dict(came_back[ret_id])} came back sellable")
        # The customer hears about a refund once, and about an expired return not at all.
        refund_mails = sum(n for (to, subject), n in sent_to_subject.items()
                           if to == email_ and REFUND_EMAIL_WORDS in subject)
        wanted = 1 if EXPECTED_RETURN_STATE[path] == "refunded" else 0
        if refund_mails != wanted:
            v["refunds emailed once"].append(f"{label}: {refund_mails} refund email(s), expected {wanted}")
        workflow_status = after.return_workflows.get(ret_id)
        if workflow_status != "COMPLETED":
            v["every return terminal"].append(f"{label}: return #{ret_id}'s saga is {workflow_status} in Temporal")
    for ret_id in after.unsettled:
        v["every return terminal"].append(f"return #{ret_id} still open when the run ended")
    for check in (invariants.assert_returns_consistent, invariants.assert_no_tracking_for_settled_parcels):
        try:
            check()
        except AssertionError as exc:
            v["every return terminal"].append(f"{check.__name__}: {exc}")


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
