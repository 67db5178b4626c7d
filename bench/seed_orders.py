"""Seed a database with many orders for page benchmarks (no Temporal, no sagas run).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench .venv/bin/python bench/seed_orders.py --flush
    .venv/bin/python bench/seed_orders.py --orders 20000

Writes N orders (default 100,000) with 1-3 lines each and about 8 saga events each, in a
realistic mix of outcomes: most completed or delivered, some compensated, rejected or
cancelled, a few hundred running, ~3% stuck at various steps, ~1% waiting in the follow-up
queue (some claimed) and as many follow-ups resolved in the last weeks, plus operator
actions for the audit log. Rows are written with bulk_create in batches; order numbers,
timestamps and workflow ids are set as the app would have set them. Also creates the staff
users bench-viewer, bench-support, bench-operator and bench-admin (password bench-pass-123).

Stock counters are not moved (conservation still holds per product); ledgers (payments,
reservations, shipments) are not written: the pages measured here do not list them.
"""

import argparse
import os
import random
import sys
import time
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ordersite.settings")
os.environ.setdefault("DJANGO_ENV", "development")  # DEBUG and the sandbox, as `make run` has them

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.core.management.color import no_style  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.db.models import Max  # noqa: E402
from django.utils import timezone  # noqa: E402

from orders.models import FollowUp, Order, OrderLine, Product, SagaEvent, new_public_token  # noqa: E402
from orders.services.catalog import product_create  # noqa: E402
from orders.models import OperatorAction  # noqa: E402
from orders.services.ordering import order_workflow_id  # noqa: E402
from ops.roles import ROLES, staff_user_create  # noqa: E402

PRODUCTS = 200
DAYS = 180
STAFF_PASSWORD = "bench-pass-123"

# (weight, outcome): what happened to an order's saga.
OUTCOMES = [
    (66.0, "completed"),
    (12.0, "delivered"),
    (4.0, "compensated"),
    (2.0, "rejected"),
    (2.0, "cancelled"),
    (3.0, "stuck"),
    (1.0, "followup"),
    (1.0, "followup_resolved"),
    (2.5, "running"),
    (0.5, "pending"),
]
STUCK_STEPS = [(60, "charge"), (25, "ship"), (10, "reserve"), (5, "confirm")]
FORWARD = ["validate", "reserve", "charge", "confirm", "ship", "notify"]
ERRORS = {
    "reserve": "Inventory service unavailable",
    "charge": "Payment gateway unavailable (HTTP 503)",
    "confirm": "Inventory service timed out",
    "ship": "Carrier API unavailable",
    "notify": "Mail server refused the message: mailbox full",
}
FIRST = ["Ada", "Grace", "Linus", "Barbara", "Alan", "Margaret", "Ken", "Radia", "Dennis", "Frances", "Edsger", "Hedy"]
LAST = ["Lovelace", "Hopper", "Torvalds", "Liskov", "Turing", "Hamilton", "Thompson", "Perlman", "Ritchie", "Allen"]


@contextmanager
def timestamps_as_given(*models):
    """Let bulk_create keep the created_at/updated_at values set on the instances.

    auto_now / auto_now_add would stamp every row with the seeding time; a benchmark of
    date filters and "since when" columns needs the history spread out.
    """
    saved = []
    for model in models:
        for field in model._meta.concrete_fields:
            if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
                saved.append((field, field.auto_now, field.auto_now_add))
                field.auto_now = field.auto_now_add = False
    try:
        yield
    finally:
        for field, auto_now, auto_now_add in saved:
            field.auto_now, field.auto_now_add = auto_now, auto_now_add


def pick(rng: random.Random, weighted):
    return rng.choices([v for _, v in weighted], weights=[w for w, _ in weighted])[0]


def ensure_products(rng: random.Random) -> list[Product]:
    products = list(Product.objects.filter(sku__startswith="BENCH-").order_by("pk"))
    for n in range(len(products), PRODUCTS):
        price = Decimal(rng.randrange(300, 15000)) / 100
        products.append(product_create(sku=f"BENCH-{n:04d}", name=f"Bench product {n}", price=price, stock=1_000_000))
    return products


def ensure_staff() -> dict:
    from django.contrib.auth import get_user_model

    existing = {u.username: u for u in get_user_model().objects.filter(username__startswith="bench-")}
    # Password hashing is slow on purpose: only new users get one.
    return {
        role: existing.get(f"bench-{role}")
        or staff_user_create(username=f"bench-{role}", password=STAFF_PASSWORD, role=role)
        for role in ROLES
    }


def events_for(order: Order, outcome: str, stuck_step: str, rng: random.Random) -> list[SagaEvent]:
    """About 8 events telling the order's story, spaced seconds apart from its creation."""
    at = order.created_at
    events = []

    def add(step, kind, detail="", attempt=1):
        nonlocal at
        at += timedelta(seconds=rng.uniform(0.05, 3))
        events.append(SagaEvent(order=order, step=step, kind=kind, detail=detail, attempt=attempt, created_at=at))

    if outcome == "pending":
        return events
    if outcome == "rejected":
        add("validate", "started")
        add("validate", "failed", "Order is invalid: Bench product is no longer for sale")
        add("", "finished", "rejected")
        return events
    stop = {"stuck": stuck_step, "running": rng.choice(FORWARD[1:5]), "compensated": "charge", "cancelled": "reserve"}
    for step in FORWARD:
        if step == stop.get(outcome):
            add(step, "started")
            if outcome == "running":
                return events
            attempts = 3 if outcome == "stuck" else 2
            if outcome == "cancelled":
                add(step, "signal", "cancel: customer called")
            else:
                for attempt in range(1, attempts + 1):
                    add(step, "failed", ERRORS.get(step, "declined"), attempt)
            if outcome == "stuck":
                add(step, "stuck", f"{ERRORS[step]} (gave up after {attempts} attempts; waiting for an operator)")
                return events
            for undo in reversed(FORWARD[1:FORWARD.index(step)]):
                add(undo, "compensated")
            add("", "finished", outcome)
            return events
        if step == "notify" and outcome.startswith("followup"):
            add(step, "failed", ERRORS["notify"])
            add(step, "followup", ERRORS["notify"])
            if outcome == "followup":
                return events
            add(step, "signal", "resolved")
            add("", "finished", "completed")
            return events
        if step in ("validate", "reserve", "charge", "confirm", "notify"):
            add(step, "succeeded")
        else:
            add(step, "started")
            add(step, "succeeded", "2 parcel(s) booked")
    add("", "finished", "completed")
    return events


STATE = {
    # outcome: (order status, saga status, current step)
    "completed": ("completed", "completed", "notify"),
    "delivered": ("delivered", "completed", "notify"),
    "compensated": ("failed", "compensated", "charge"),
    "rejected": ("rejected", "rejected", "validate"),
    "cancelled": ("cancelled", "cancelled", "reserve"),
    "stuck": ("processing", "stuck", None),
    "followup": ("processing", "needs_followup", "notify"),
    "followup_resolved": ("completed", "completed", "notify"),
    "running": ("processing", "running", None),
    "pending": ("placed", "pending", ""),
}


def seed(total: int, batch: int, seed_value: int) -> None:
    rng = random.Random(seed_value)
    products = ensure_products(rng)
    staff = ensure_staff()
    workers = [staff["support"], staff["operator"], staff["admin"]]
    now = timezone.now()
    start_pk = (Order.objects.aggregate(m=Max("pk"))["m"] or 0) + 1
    # Orders are placed evenly over the last DAYS days, the newest at the highest id.
    span = timedelta(days=DAYS).total_seconds()
    counts: dict[str, int] = {}
    started = time.monotonic()

    for offset in range(0, total, batch):
        size = min(batch, total - offset)
        orders, lines, events, followups, actions = [], [], [], [], []
        for i in range(size):
            n = offset + i
            pk = start_pk + n
            created = now - timedelta(seconds=span * (total - n) / total) - timedelta(minutes=10)
            outcome = pick(rng, OUTCOMES)
            if outcome in ("running", "pending"):
                created = now - timedelta(seconds=rng.uniform(5, 600))
            counts[outcome] = counts.get(outcome, 0) + 1
            status, saga_status, step = STATE[outcome]
            stuck_step = pick(rng, STUCK_STEPS) if outcome == "stuck" else ""
            chosen = rng.sample(products, rng.randint(1, 3))
            quantities = [rng.randint(1, 4) for _ in chosen]
            first, last = rng.choice(FIRST), rng.choice(LAST)
            order = Order(
                pk=pk, number=f"SO-{pk:06d}", workflow_id=order_workflow_id(pk), public_token=new_public_token(),
                customer_name=f"{first} {last}", customer_email=f"{first}.{last}.{pk}@example.com".lower(),
                currency="EUR", total=sum((p.price * q for p, q in zip(chosen, quantities)), Decimal("0")),
                status=status, saga_status=saga_status, created_at=created,
            )
            story = events_for(order, outcome, stuck_step, rng)
            if step is None:  # stuck or running: where the story stops
                order.current_step = story[-1].step if story else ""
            else:
                order.current_step = step
            order.last_event_at = story[-1].created_at if story else None
            order.updated_at = order.last_event_at or created
            if outcome == "stuck":
                order.last_error = story[-1].detail
                order.stuck_since = story[-1].created_at
                # Stuck orders pile up over the last days, not months.
                shift = created - (now - timedelta(hours=rng.uniform(0.1, 72)))
                for event in story:
                    event.created_at -= shift
                order.created_at -= shift
                order.stuck_since -= shift
                order.last_event_at -= shift
                order.updated_at -= shift
            elif outcome in ("followup", "compensated", "rejected"):
                order.last_error = next((e.detail for e in reversed(story) if e.kind == "failed"), "")
            orders.append(order)
            lines += [OrderLine(order=order, product=p, quantity=q, unit_price=p.price) for p, q in zip(chosen, quantities)]
            events += story
            if outcome in ("followup", "followup_resolved"):
                opened = next(e.created_at for e in story if e.kind == "followup")
                resolved = outcome == "followup_resolved"
                followups.append(FollowUp(
                    order=order, reason=ERRORS["notify"], created_at=opened,
                    state="resolved" if resolved else "open",
                    claimed_by=rng.choice(workers) if resolved or rng.random() < 0.3 else None,
                    notes=f"[{opened:%Y-%m-%d %H:%M} UTC] bench-support: Called the customer." if resolved else "",
                    resolution="resolved" if resolved else "",
                    resolved_at=now - timedelta(hours=rng.uniform(1, 24 * 21)) if resolved else None,
                ))
                if resolved:
                    actions.append(OperatorAction(
                        order=order, action="resolved", actor=rng.choice(workers), reason="Reached by phone",
                        outcome="applied", outcome_detail="follow-up resolved", created_at=opened + timedelta(hours=2),
                        updated_at=opened + timedelta(hours=2),
                    ))
            if outcome == "compensated" and rng.random() < 0.5:
                at = story[-1].created_at
                actions.append(OperatorAction(
                    order=order, action="compensate", actor=staff["operator"], reason="Gateway keeps failing",
                    outcome="applied", outcome_detail="compensating", created_at=at, updated_at=at,
                ))
            if outcome == "completed" and rng.random() < 0.02:
                at = story[-1].created_at
                actions.append(OperatorAction(
                    order=order, action="retry", actor=staff["operator"], reason="Gateway back",
                    outcome=rng.choice(["applied", "applied", "ignored", "failed"]), created_at=at, updated_at=at,
                ))
        with transaction.atomic(), timestamps_as_given(Order, SagaEvent, FollowUp, OperatorAction):
            Order.objects.bulk_create(orders, batch_size=batch)
            OrderLine.objects.bulk_create(lines, batch_size=batch)
            SagaEvent.objects.bulk_create(events, batch_size=batch)
            FollowUp.objects.bulk_create(followups, batch_size=batch)
            OperatorAction.objects.bulk_create(actions, batch_size=batch)
        done = offset + size
        print(f"  {done:>7,} orders  ({time.monotonic() - started:5.1f} s)", flush=True)

    # Explicit primary keys leave Postgres's sequence behind: move it past them.
    with connection.cursor() as cursor:
        for sql in connection.ops.sequence_reset_sql(no_style(), [Order]):
            cursor.execute(sql)
    print(f"Seeded {total:,} orders in {time.monotonic() - started:.1f} s: "
          + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])))
    print(f"Totals: {Order.objects.count():,} orders, {SagaEvent.objects.count():,} saga events, "
          f"{FollowUp.objects.filter(state='open').count():,} open follow-ups, "
          f"{OperatorAction.objects.count():,} operator actions.")
    print(f"Staff users: {', '.join(f'bench-{r}' for r in ROLES)} (password {STAFF_PASSWORD}).")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=100_000, help="how many orders to add (default 100,000)")
    parser.add_argument("--batch", type=int, default=5_000, help="orders per bulk_create batch and transaction")
    parser.add_argument("--seed", type=int, default=42, help="random seed, for the same data every time")
    parser.add_argument("--flush", action="store_true", help="empty the database first (migrate runs too)")
    args = parser.parse_args(argv)
    if args.orders < 1 or args.batch < 1:
        parser.error("--orders and --batch must be at least 1")
    call_command("migrate", interactive=False, verbosity=0)
    if args.flush:
        call_command("flush", interactive=False, verbosity=0)
    print(f"Seeding {args.orders:,} orders into {connection.vendor} database {connection.settings_dict['NAME']}")
    seed(args.orders, args.batch, args.seed)
    if connection.vendor == "postgresql":
        # Planner statistics and the visibility map, as autovacuum keeps them on a live
        # database; without them the first page loads measure a freshly loaded table.
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")


if __name__ == "__main__":
    main()
